// The name of each device by its block device, published for udev: while
// a device exists, DIR/ublkbN holds its name, and the rule in
// systemd/60-ublkd.rules turns that into /dev/ublk/by-name/NAME, a path
// that stays the same whatever id the kernel gives the device.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "base/error.h"

namespace ublkd {

class DeviceNames {
 public:
  // The link udev makes for a device, whether or not it exists.
  static std::string stable_path(const std::string& name) { return "/dev/ublk/by-name/" + name; }

  explicit DeviceNames(std::filesystem::path dir) : dir_(std::move(dir)) {}
  // DIR/ublkb<dev_id> says `name` from now on (written whole, in one
  // rename). Safe from any thread.
  Result<void> publish(uint32_t dev_id, const std::string& name) const;
  // DIR/ublkb<dev_id> goes, unless another device took the id meanwhile.
  void withdraw(uint32_t dev_id, const std::string& name) const;

 private:
  std::filesystem::path dir_;
};

}  // namespace ublkd
