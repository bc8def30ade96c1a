#include "device_names.h"

#include <fstream>
#include <system_error>

#include "atomic_file.h"

namespace ublkd {

namespace fs = std::filesystem;

Result<void> DeviceNames::publish(uint32_t dev_id, const std::string& name) const {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) return Error(ec.value(), "create " + dir_.string());
  return write_file_atomically(dir_ / ("ublkb" + std::to_string(dev_id)), name + "\n", 0644);
}

void DeviceNames::withdraw(uint32_t dev_id, const std::string& name) const {
  const fs::path file = dir_ / ("ublkb" + std::to_string(dev_id));
  std::string held;
  std::getline(std::ifstream(file), held);
  if (held != name) return;
  std::error_code ec;
  fs::remove(file, ec);
}

}  // namespace ublkd
