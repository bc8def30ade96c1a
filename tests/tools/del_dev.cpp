// ublkd-del-dev: STOP_DEV + DEL_DEV of ublk devices by id, for VM cases that
// kill ublkd with SIGKILL and must leave the kernel as they found it (a
// device whose server died stays until someone deletes it).
//
//   ublkd-del-dev ID...
#include <cstdio>
#include <cstdlib>
#include <string>

#include "ctrl/control_device.h"

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  if (argc < 2) {
    std::fprintf(stderr, "usage: ublkd-del-dev ID...\n");
    return 1;
  }
  auto ctrl = ublkd::ControlDevice::open();
  if (!ctrl) {
    std::fprintf(stderr, "%s\n", ctrl.error().to_string().c_str());
    return 1;
  }
  if (auto f = ctrl->probe_features(5s); !f) {
    std::fprintf(stderr, "GET_FEATURES: %s\n", f.error().to_string().c_str());
  }
  int status = 0;
  for (int i = 1; i < argc; ++i) {
    const auto id = static_cast<uint32_t>(std::strtoul(argv[i], nullptr, 10));
    // STOP_DEV fails harmlessly on a device that is stopped already.
    (void)ctrl->stop_dev(id, 5s);
    if (auto r = ctrl->del_dev(id, 10s); !r) {
      std::fprintf(stderr, "DEL_DEV %u: %s\n", id, r.error().to_string().c_str());
      status = 1;
    }
  }
  return status;
}
