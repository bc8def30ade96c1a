#include "backend/mem_backend.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <string>
#include <utility>

namespace ublkd {

namespace {

Result<void> check_size(uint64_t size) {
  if (size == 0) return Error(EINVAL, "mem backend size must not be zero");
  if (size % 512 != 0) {
    return Error(EINVAL,
                 "mem backend size " + std::to_string(size) + " is not a multiple of 512 bytes");
  }
  if (size > MemBackend::kMaxSize) {
    return Error(EINVAL, "mem backend size " + std::to_string(size) + " is above the largest, " +
                             std::to_string(MemBackend::kMaxSize));
  }
  return {};
}

}  // namespace

MemBackend::MemBackend(UniqueFd memfd, std::unique_ptr<ChunkedMemory> memory, uint64_t size)
    : memfd_(std::move(memfd)), memory_(std::move(memory)), size_(size) {}

Result<std::unique_ptr<MemBackend>> MemBackend::create(uint64_t size) {
  if (auto r = check_size(size); !r) return r.error();

  // Sealing is only allowed if asked for at creation; see F_SEAL_SHRINK below.
  UniqueFd fd(::memfd_create("ublkd-mem", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return errno_error("memfd_create");
  // memfds are VM_NORESERVE: the size costs nothing until pages are touched.
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    int err = errno;
    return Error(err, "resize memfd to " + std::to_string(size) + " bytes");
  }
  // The fd is meant to be passed on (fd store, a successor daemon). Whoever
  // holds it must not be able to shrink the file under the device, whose
  // requests there would then fail.
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK) != 0) return errno_error("seal memfd size");
  return map(std::move(fd), size);
}

Result<std::unique_ptr<MemBackend>> MemBackend::adopt(UniqueFd memfd, uint64_t size) {
  if (auto r = check_size(size); !r) return r.error();
  if (!memfd) return Error(EBADF, "adopt mem backend: no memfd given");

  struct stat st {};
  if (::fstat(memfd.get(), &st) != 0) return errno_error("adopt mem backend: fstat memfd");
  int seals = ::fcntl(memfd.get(), F_GET_SEALS);
  if (!S_ISREG(st.st_mode) || seals < 0) {
    return Error(EINVAL, "adopt mem backend: fd is not a memfd");
  }
  if (static_cast<uint64_t>(st.st_size) < size) {
    return Error(EINVAL, "adopt mem backend: memfd holds " + std::to_string(st.st_size) +
                             " bytes, fewer than " + std::to_string(size));
  }
  if ((seals & (F_SEAL_SHRINK | F_SEAL_SEAL)) == 0 &&
      ::fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK) != 0) {
    return errno_error("adopt mem backend: seal memfd size");
  }

  auto backend = map(std::move(memfd), size);
  if (!backend) return backend.error().wrap("adopt mem backend");
  // Beyond `size`: what a shrink cut short by a crash left.
  if (static_cast<uint64_t>(st.st_size) > size) {
    if (auto r = backend.value()->punch(size, static_cast<uint64_t>(st.st_size)); !r)
      return r.error().wrap("adopt mem backend");
  }
  return backend;
}

Result<std::unique_ptr<MemBackend>> MemBackend::map(UniqueFd memfd, uint64_t size) {
  auto memory = ChunkedMemory::map(memfd.get(), size, /*writable=*/true);
  if (!memory) return memory.error().wrap("map the memfd");
  return std::unique_ptr<MemBackend>(
      new MemBackend(std::move(memfd), std::move(memory).value(), size));
}

Result<uint64_t> MemBackend::memfd_length() const {
  struct stat st {};
  if (::fstat(memfd_.get(), &st) != 0) return errno_error("fstat memfd");
  return static_cast<uint64_t>(st.st_size);
}

Result<void> MemBackend::punch(uint64_t begin, uint64_t end) {
  if (begin >= end) return {};
  if (::fallocate(memfd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  static_cast<off_t>(begin), static_cast<off_t>(end - begin)) != 0)
    return errno_error("punch bytes " + std::to_string(begin) + ".." + std::to_string(end) +
                       " out of the memfd");
  return {};
}

Result<void> MemBackend::check_resize(uint64_t bytes, bool force) const {
  if (auto r = check_size(bytes); !r) return r;
  const uint64_t size = this->size();
  if (bytes >= size || force) return {};
  const off_t data = ::lseek(memfd_.get(), static_cast<off_t>(bytes), SEEK_DATA);
  if (data < 0 && errno != ENXIO) return errno_error("find data in memfd");
  if (data >= 0 && static_cast<uint64_t>(data) < size) {
    return Error(ENOTEMPTY, "data is written at byte " + std::to_string(data) +
                                ", beyond the new size " + std::to_string(bytes));
  }
  return {};
}

Result<void> MemBackend::resize(uint64_t bytes) {
  if (auto r = check_size(bytes); !r) return r;
  const uint64_t size = this->size();
  if (bytes < size) {
    // The kernel sends nothing beyond `bytes` any more; zero() wants the
    // old size to cover the last chunk.
    if (const int r = memory_->zero(bytes, size - bytes, size); r < 0)
      return Error(-r, "zero the range cut off");
    size_.store(bytes, std::memory_order_release);
    return {};
  }
  auto length = memfd_length();
  if (!length) return length.error();
  // A longer memfd holds zeros past `size` unless a shrink raced a write.
  if (auto r = punch(size, std::min(*length, bytes)); !r) return r;
  if (*length < bytes && ::ftruncate(memfd_.get(), static_cast<off_t>(bytes)) != 0)
    return errno_error("grow the memfd to " + std::to_string(bytes) + " bytes");
  if (auto r = memory_->cover(bytes); !r) return r;
  size_.store(bytes, std::memory_order_release);
  return {};
}

BackendFeatures MemBackend::features() const {
  BackendFeatures f;
  f.volatile_cache = false;  // a write is in the page cache, which is the device
  f.discard = true;
  f.write_zeroes = true;
  // Smaller discards are served correctly (the covered bytes are zeroed), but
  // they free nothing and can even fault pages in. Advertising the chunk size
  // makes the kernel align its splits of large discards to chunks and lets
  // fstrim / filesystems skip ranges that could not be released anyway.
  f.discard_granularity = kChunkSize;
  return f;
}

int MemBackend::handle(const IoRequest& req) noexcept {
  switch (req.op) {
    case IoOp::kFlush:
      return 0;
    case IoOp::kRead:
    case IoOp::kWrite:
    case IoOp::kDiscard:
    case IoOp::kWriteZeroes:
      break;
    default:
      return -EOPNOTSUPP;
  }
  // Written so that it cannot overflow for any offset.
  const uint64_t size = this->size();
  if (req.offset > size || req.length > size - req.offset) return -EINVAL;
  if (req.length == 0) return 0;

  switch (req.op) {
    case IoOp::kRead:
    case IoOp::kWrite:
      if (req.length > static_cast<uint32_t>(INT_MAX)) return -EINVAL;
      return memory_->transfer(req);
    case IoOp::kDiscard:
    case IoOp::kWriteZeroes:
      // NOUNMAP asks to keep the range provisioned, which means nothing for
      // memory that is allocated on demand anyway; releasing it is better.
      return memory_->zero(req.offset, req.length, size);
    default:
      return -EOPNOTSUPP;
  }
}

}  // namespace ublkd
