// Where a mem device's memory lives so that it outlives the process: a
// memfd parked in systemd's fd store (FDSTORE=1, named "mem-NAME") when
// ublkd runs as a systemd service, or a file STATE_DIR/mem/NAME on tmpfs
// otherwise. Either survives a crash and an upgrade; neither survives a
// reboot, and `systemctl stop` (which removes the devices) drops both.
// Thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "backends/backend_type.h"
#include "base/error.h"
#include "base/unique_fd.h"

namespace ublkd {

class MemStore final : public KeptMemory {
 public:
  enum class Kind { kFdStore, kDirectory };
  // Sends one sd_notify message, with `fd` attached unless it is -1;
  // returns what sd_notify / sd_pid_notify_with_fds return. Replaceable for
  // tests.
  using Notify = std::function<int(const std::string& message, int fd)>;

  // fd store: `stored` are the fds systemd handed back, by FDNAME.
  static std::unique_ptr<MemStore> fd_store(std::map<std::string, UniqueFd> stored,
                                            Notify notify = {});
  static std::unique_ptr<MemStore> directory(std::filesystem::path dir);

  Kind kind() const { return kind_; }
  // "systemd's fd store" or the directory, for logs.
  std::string describe() const override;

  // Memory for a new device: `size` bytes of zeros, kept where a restarted
  // ublkd finds it. Whatever an earlier device of that name left is dropped.
  Result<UniqueFd> create(const std::string& name, uint64_t size) override;
  // The memory a device of that name had in an earlier process; ENOENT if
  // none was kept (the unit lacks FileDescriptorStoreMax=, or the file is
  // gone), EINVAL if it does not hold `size` bytes.
  Result<UniqueFd> reopen(const std::string& name, uint64_t size) override;
  // Lets the memory go (the device is deleted). Safe for unknown names.
  void drop(const std::string& name);
  // Drops what earlier processes kept for devices not in `keep`; returns
  // the names dropped.
  std::vector<std::string> drop_unclaimed(const std::set<std::string>& keep);

 private:
  void drop_locked(const std::string& name);
  MemStore(Kind kind, std::filesystem::path dir, std::map<std::string, UniqueFd> stored,
           Notify notify)
      : kind_(kind), dir_(std::move(dir)), stored_(std::move(stored)), notify_(std::move(notify)) {}
  static std::string fd_name(const std::string& device) { return "mem-" + device; }

  Kind kind_;
  std::mutex mu_;  // devices start on threads of their own
  std::filesystem::path dir_;
  std::map<std::string, UniqueFd> stored_;  // fd store: what systemd handed back
  Notify notify_;
};

}  // namespace ublkd
