// What a later ublkd needs to find this one's devices again after a crash
// or an upgrade: one record per device in STATE_DIR/devices/NAME.json, with
// the spec, the device's identity and the kernel's device id. A record is
// written before ADD_DEV (with the identity, which ADD_DEV stores in the
// kernel, but no id yet), completed with the id ADD_DEV returns, marked
// removed when the kernel deleted the device but still holds its id, and
// dropped once the kernel holds nothing of it any more. So a device is
// never in the kernel without a record saying whose it is, and a record
// can always prove which kernel device is its own.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/error.h"
#include "base/unique_fd.h"
#include "config/device_spec.h"

namespace ublkd {

struct DeviceRecord {
  DeviceSpec spec;  // spec.source: the drop-in it came from, or ""
  // None until ADD_DEV answered.
  std::optional<uint32_t> dev_id;
  // DeviceConfig::identity; 0 in records of version 1, which ublkd wrote
  // before devices had identities.
  uint64_t identity = 0;
  bool persistent = false;
  // The kernel deleted the device; it holds the id until the last user of
  // /dev/ublkbN closes it. Nothing to recover, only a release to wait for.
  bool removed = false;
  // load(): when the record was last written.
  std::filesystem::file_time_type written{};
};

// The record as JSON text, and back. parse_record() names the origin and the
// field in its error.
std::string record_text(const DeviceRecord& r);
Result<DeviceRecord> parse_record(std::string_view text, const std::string& origin);
// "0123456789abcdef" (format_identity's form) back to the number; nullopt
// for anything else, 0 included.
std::optional<uint64_t> parse_identity(const std::string& text);

// Records of version 1 carry no identity, so two of them naming one
// device id cannot both be checked against the kernel. Ids are only reused
// once the kernel released a device, so of those the newest describes the
// device the kernel may still have; the older ones are taken out of
// `records` and returned, each with the name of the record that supersedes
// it.
std::vector<std::pair<DeviceRecord, std::string>> take_superseded(
    std::vector<DeviceRecord>& records);

// Takes STATE_DIR/ublkd.lock (flock) for the life of the process: two
// ublkds sharing one state dir would recover, retire and delete each
// other's devices. The error names the dir and the pid holding it.
Result<UniqueFd> lock_state_dir(const std::filesystem::path& state_dir);

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
