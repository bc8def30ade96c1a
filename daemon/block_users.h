// Who uses a block device, as far as the system tells: what is mounted from
// it, what holds it (device mapper, md), which processes have it open, for
// the disk and each of its partitions. What a careful `del` names when it
// refuses a device in use.
#pragma once

#include <string>
#include <vector>

namespace ublkd {

// One line per use: "ublkb3p1 mounted on /srv/data", "ublkb3 held by
// dm-0", "ublkb3 open in fio (pid 412)". The calling process itself is left
// out. `disk` is the kernel's name, "ublkb3". Empty: nobody found.
std::vector<std::string> block_device_users(const std::string& disk);

}  // namespace ublkd
