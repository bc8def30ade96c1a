// What a later ublkd needs to find this one's devices again after a crash
// or an upgrade: one record per device in STATE_DIR/devices/NAME.json, with
// the spec and the kernel's device id. A record is written as soon as the
// kernel knows the device (ADD_DEV) and dropped once the kernel holds
// nothing of it any more (DEL_DEV), so a device is never in the kernel
// without a record saying whose it is.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "base/error.h"
#include "config/device_spec.h"

namespace ublkd {

struct DeviceRecord {
  DeviceSpec spec;  // spec.source: the drop-in it came from, or ""
  uint32_t dev_id = 0;
  bool persistent = false;
};

// The record as JSON text, and back. parse_record() names the origin and the
// field in its error.
std::string record_text(const DeviceRecord& r);
Result<DeviceRecord> parse_record(std::string_view text, const std::string& origin);

class StateStore {
 public:
  // `dir`: STATE_DIR/devices; created on the first save().
  explicit StateStore(std::filesystem::path dir) : dir_(std::move(dir)) {}

  // Replaces the record atomically (write, fsync, rename).
  Result<void> save(const DeviceRecord& r) const;
  // ENOENT counts as done.
  Result<void> remove(const std::string& name) const;
  // A marker (NAME.recovering) that a recovery of the device has sent
  // START_USER_RECOVERY and not finished yet: if it is still there at the
  // next start, that recovery was cut short. Written durably.
  Result<void> mark_recovering(const std::string& name) const;
  bool recovering_marked(const std::string& name) const;
  Result<void> clear_recovering(const std::string& name) const;

  // Every readable record; each unreadable one adds a line to `problems`.
  std::vector<DeviceRecord> load(std::vector<std::string>& problems) const;

  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path path(const std::string& name) const { return dir_ / (name + ".json"); }
  std::filesystem::path dir_;
};

}  // namespace ublkd
