#include "recovery/mem_store.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

namespace ublkd {

namespace fs = std::filesystem;

namespace {

// Kept memory is never shorter than its device, but may be longer: a
// device shrunk live keeps its memfd's length (MemBackend::resize).
Result<void> check_size(int fd, uint64_t size, const std::string& what) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return errno_error("fstat " + what);
  if (static_cast<uint64_t>(st.st_size) < size) {
    return Error(EINVAL, what + " holds " + std::to_string(st.st_size) +
                             " bytes, fewer than the spec's " + std::to_string(size));
  }
  return {};
}

}  // namespace

std::unique_ptr<MemStore> MemStore::fd_store(std::map<std::string, UniqueFd> stored,
                                             Notify notify) {
  if (!notify) {
    notify = [](const std::string& message, int fd) {
      if (fd < 0) return sd_notify(0, message.c_str());
      return sd_pid_notify_with_fds(0, 0, message.c_str(), &fd, 1);
    };
  }
  return std::unique_ptr<MemStore>(
      new MemStore(Kind::kFdStore, {}, std::move(stored), std::move(notify)));
}

std::unique_ptr<MemStore> MemStore::directory(fs::path dir) {
  return std::unique_ptr<MemStore>(new MemStore(Kind::kDirectory, std::move(dir), {}, {}));
}

std::string MemStore::describe() const {
  return kind_ == Kind::kFdStore ? "systemd's fd store" : dir_.string();
}

Result<UniqueFd> MemStore::create(const std::string& name, uint64_t size) {
  std::lock_guard lock(mu_);
  drop_locked(name);
  if (kind_ == Kind::kFdStore) {
    const std::string label = "ublkd-" + fd_name(name);
    UniqueFd fd(::memfd_create(label.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd) return errno_error("memfd_create");
    if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0)
      return errno_error("size memfd to " + std::to_string(size) + " bytes");
    const int r = notify_("FDSTORE=1\nFDNAME=" + fd_name(name), fd.get());
    if (r < 0) return Error(-r, "hand the memfd to systemd's fd store");
    if (r == 0) return Error(ENOTCONN, "hand the memfd to systemd's fd store: no NOTIFY_SOCKET");
    return fd;
  }
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) return Error(ec.value(), "create " + dir_.string());
  // On a disk file system the "memory" would be written back to the disk:
  // not what a mem device promises, and slow. Refuse rather than do that.
  struct statfs sfs {};
  if (::statfs(dir_.c_str(), &sfs) != 0) return errno_error("statfs " + dir_.string());
  if (sfs.f_type != TMPFS_MAGIC && sfs.f_type != RAMFS_MAGIC) {
    return Error(EXDEV, dir_.string() +
                            " is not on tmpfs: a mem device with recovery keeps its memory "
                            "there (use a state dir on tmpfs, or \"recovery\": false)");
  }
  const fs::path p = dir_ / name;
  UniqueFd fd(::open(p.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) return errno_error("create " + p.string());
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    Error e = errno_error("size " + p.string() + " to " + std::to_string(size) + " bytes");
    ::unlink(p.c_str());
    return e;
  }
  return fd;
}

Result<UniqueFd> MemStore::reopen(const std::string& name, uint64_t size) {
  std::lock_guard lock(mu_);
  if (kind_ == Kind::kFdStore) {
    auto it = stored_.find(fd_name(name));
    if (it == stored_.end()) {
      return Error(ENOENT, "systemd's fd store handed back no memfd " + fd_name(name) +
                               " (does the unit set FileDescriptorStoreMax=?)");
    }
    UniqueFd fd = std::move(it->second);
    stored_.erase(it);
    if (auto r = check_size(fd.get(), size, "memfd " + fd_name(name)); !r) return r.error();
    return fd;
  }
  const fs::path p = dir_ / name;
  UniqueFd fd(::open(p.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) return errno_error("open " + p.string());
  if (auto r = check_size(fd.get(), size, p.string()); !r) return r.error();
  return fd;
}

void MemStore::drop(const std::string& name) {
  std::lock_guard lock(mu_);
  drop_locked(name);
}

void MemStore::drop_locked(const std::string& name) {
  if (kind_ == Kind::kFdStore) {
    stored_.erase(fd_name(name));
    (void)notify_("FDSTOREREMOVE=1\nFDNAME=" + fd_name(name), -1);
    return;
  }
  const fs::path p = dir_ / name;
  (void)::unlink(p.c_str());
}

std::vector<std::string> MemStore::drop_unclaimed(const std::set<std::string>& keep) {
  std::lock_guard lock(mu_);
  std::vector<std::string> dropped;
  if (kind_ == Kind::kFdStore) {
    std::vector<std::string> names;
    for (const auto& [fdname, fd] : stored_) names.push_back(fdname);
    for (const std::string& fdname : names) {
      const std::string device = fdname.substr(4);
      if (keep.count(device)) continue;
      drop_locked(device);
      dropped.push_back(device);
    }
    return dropped;
  }
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const std::string device = entry.path().filename().string();
    if (keep.count(device)) continue;
    drop_locked(device);
    dropped.push_back(device);
  }
  return dropped;
}

}  // namespace ublkd
