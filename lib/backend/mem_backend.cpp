#include "backend/mem_backend.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "base/io_all.h"

namespace ublkd {

namespace {

constexpr uint64_t kChunk = MemBackend::kChunkSize;
constexpr uint64_t kWordBits = 64;

// Bits lo..hi (inclusive) of a bitmap word.
constexpr uint64_t bit_range(uint64_t lo, uint64_t hi) {
  return (~uint64_t{0} >> (kWordBits - 1 - hi)) & (~uint64_t{0} << lo);
}

// Requests for unrelated chunks share bitmap words, so every access must be
// atomic. Ordering between requests that touch the same bytes is not our job:
// the kernel only issues a request after the ones it depends on completed, and
// that hand-off through the ring is a full barrier. Relaxed is therefore enough.
constexpr auto kOrder = std::memory_order_relaxed;

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

// The chunk bitmap's bytes for a device of `size` bytes.
uint64_t bitmap_bytes(uint64_t size) {
  const uint64_t chunks = (size + kChunk - 1) / kChunk;
  return (chunks + kWordBits - 1) / kWordBits * sizeof(uint64_t);
}

}  // namespace

MemBackend::MemBackend(UniqueFd memfd, Mapping data, Mapping bitmap, uint64_t size)
    : memfd_(std::move(memfd)),
      data_(std::move(data)),
      bitmap_(std::move(bitmap)),
      size_(size),
      base_(static_cast<std::byte*>(data_.get())),
      words_(static_cast<uint64_t*>(bitmap_.get())) {}

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
  // holds it must not be able to shrink the file under our mapping, which
  // would turn our accesses into SIGBUS.
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
  if (auto r = backend.value()->rebuild_bitmap(); !r) return r.error().wrap("adopt mem backend");
  return backend;
}

Result<Mapping> MemBackend::map_data(int memfd, uint64_t length) {
  void* data = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, memfd, 0);
  if (data == MAP_FAILED) {
    int err = errno;
    return Error(err, "map memfd of " + std::to_string(length) + " bytes");
  }
  Mapping data_map(data, length);
  // Device contents do not belong in a core dump, and dumping a huge sparse
  // shared mapping would fault in every hole of it while the daemon dies.
  if (::madvise(data, length, MADV_DONTDUMP) != 0)
    return errno_error("exclude memfd from core dumps");
  return data_map;
}

Result<std::unique_ptr<MemBackend>> MemBackend::map(UniqueFd memfd, uint64_t size) {
  auto data_map = map_data(memfd.get(), size);
  if (!data_map) return data_map.error();

  // One bit per chunk. Untouched anonymous memory reads as zeros without
  // being allocated, so only the parts of the bitmap covering written chunks
  // cost memory (a std::vector would commit 2 MiB up front for 1 TiB). Its
  // address space is taken for the largest size, so that a grow never
  // moves it under the queue threads.
  const uint64_t bits_len = bitmap_bytes(kMaxSize);
  void* bits = ::mmap(nullptr, bits_len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (bits == MAP_FAILED) return errno_error("map chunk bitmap");
  Mapping bitmap_map(bits, bits_len);

  return std::unique_ptr<MemBackend>(new MemBackend(
      std::move(memfd), std::move(data_map).value(), std::move(bitmap_map), size));
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
    if (const int r = zero(bytes, size - bytes); r < 0) return Error(-r, "zero the range cut off");
    size_.store(bytes, std::memory_order_release);
    return {};
  }
  auto length = memfd_length();
  if (!length) return length.error();
  // A longer memfd holds zeros past `size` unless a shrink raced a write.
  if (auto r = punch(size, std::min(*length, bytes)); !r) return r;
  if (*length < bytes && ::ftruncate(memfd_.get(), static_cast<off_t>(bytes)) != 0)
    return errno_error("grow the memfd to " + std::to_string(bytes) + " bytes");
  if (data_.size() < bytes) {
    auto grown = map_data(memfd_.get(), bytes);
    if (!grown) return grown.error();
    base_.store(static_cast<std::byte*>(grown->get()), std::memory_order_release);
    retired_.push_back(std::exchange(data_, std::move(grown).value()));
  }
  size_.store(bytes, std::memory_order_release);
  return {};
}

Result<void> MemBackend::rebuild_bitmap() {
  // The invariant the I/O path relies on is "a chunk whose bit is clear is all
  // zeros in the memfd", so a chunk must be marked as soon as any page of it
  // is present, even if that page happens to be zeros.
  const off_t end = static_cast<off_t>(size());
  off_t pos = 0;
  while (pos < end) {
    off_t data = ::lseek(memfd_.get(), pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // no data after pos
      return errno_error("find data in memfd");
    }
    if (data >= end) break;
    off_t hole = ::lseek(memfd_.get(), data, SEEK_HOLE);
    if (hole < 0) return errno_error("find hole in memfd");
    hole = std::min(hole, end);
    mark_written(static_cast<uint64_t>(data) / kChunk, static_cast<uint64_t>(hole - 1) / kChunk);
    pos = hole;
  }
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

bool MemBackend::chunk_written(uint64_t chunk) const noexcept {
  std::atomic_ref<uint64_t> word(words_[chunk / kWordBits]);
  return (word.load(kOrder) >> (chunk % kWordBits)) & 1;
}

void MemBackend::mark_written(uint64_t first_chunk, uint64_t last_chunk) noexcept {
  const uint64_t first_word = first_chunk / kWordBits;
  const uint64_t last_word = last_chunk / kWordBits;
  for (uint64_t w = first_word; w <= last_word; ++w) {
    const uint64_t lo = w == first_word ? first_chunk % kWordBits : 0;
    const uint64_t hi = w == last_word ? last_chunk % kWordBits : kWordBits - 1;
    const uint64_t mask = bit_range(lo, hi);
    std::atomic_ref<uint64_t> word(words_[w]);
    // A word covers 4 MiB that several queues write to; skipping the locked
    // RMW when the bits are already set keeps the cache line shared.
    if ((word.load(kOrder) & mask) != mask) word.fetch_or(mask, kOrder);
  }
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
      if (req.buffer == nullptr) {
        if (req.copy_fd < 0) return -EINVAL;
        const int r = req.op == IoOp::kRead
                          ? read_to(req.offset, req.length, req.copy_fd, req.copy_pos)
                          : write_from(req.offset, req.length, req.copy_fd, req.copy_pos);
        return r < 0 ? r : static_cast<int>(req.length);
      }
      if (const int r = req.op == IoOp::kRead ? read(req.offset, req.length, req.buffer)
                                              : write(req.offset, req.length, req.buffer);
          r < 0)
        return r;
      return static_cast<int>(req.length);
    case IoOp::kDiscard:
    case IoOp::kWriteZeroes:
      // NOUNMAP asks to keep the range provisioned, which means nothing for
      // memory that is allocated on demand anyway; releasing it is better.
      return zero(req.offset, req.length);
    default:
      return -EOPNOTSUPP;
  }
}

uint64_t MemBackend::same_state_end(uint64_t offset, uint64_t end, bool written) const noexcept {
  uint64_t run_end = std::min(end, (offset / kChunk + 1) * kChunk);
  while (run_end < end && chunk_written(run_end / kChunk) == written) {
    run_end = std::min(end, run_end + kChunk);
  }
  return run_end;
}

namespace {

int pwrite_all(int fd, const std::byte* src, size_t n, uint64_t pos) noexcept {
  return io_all(n, [&](size_t done) {
    return ::pwrite(fd, src + done, n - done, static_cast<off_t>(pos + done));
  });
}

int pread_all(int fd, std::byte* dst, size_t n, uint64_t pos) noexcept {
  return io_all(n, [&](size_t done) {
    return ::pread(fd, dst + done, n - done, static_cast<off_t>(pos + done));
  });
}

// What an unwritten range reads as, handed to pwrite a piece at a time.
constexpr size_t kZeroBytes = 64 * 1024;
alignas(4096) const std::byte kZeros[kZeroBytes] = {};

}  // namespace

// The buffer path goes through the memfd, not the mapping: a page the
// memfd cannot get (its tmpfs full, its cgroup at the limit) is then an
// error for this request, where a copy through the mapping would be a
// SIGBUS for the whole daemon.
int MemBackend::read(uint64_t offset, uint32_t length, void* buffer) const noexcept {
  auto* dst = static_cast<std::byte*>(buffer);
  const uint64_t end = offset + length;
  while (offset < end) {
    // Serve runs of chunks in the same state with one call.
    const bool written = chunk_written(offset / kChunk);
    const uint64_t run_end = same_state_end(offset, end, written);
    const size_t n = run_end - offset;
    if (written) {
      if (const int r = pread_all(memfd_.get(), dst, n, offset); r < 0) return r;
    } else {
      std::memset(dst, 0, n);
    }
    dst += n;
    offset = run_end;
  }
  return 0;
}

int MemBackend::write(uint64_t offset, uint32_t length, const void* buffer) noexcept {
  // Mark before copying so that "bit clear" always implies "all zeros in the
  // memfd", which both zero() and rebuild_bitmap() depend on.
  mark_written(offset / kChunk, (offset + length - 1) / kChunk);
  return pwrite_all(memfd_.get(), static_cast<const std::byte*>(buffer), length, offset);
}

int MemBackend::read_to(uint64_t offset, uint32_t length, int fd, uint64_t pos) const noexcept {
  const uint64_t end = offset + length;
  while (offset < end) {
    const bool written = chunk_written(offset / kChunk);
    const uint64_t run_end = same_state_end(offset, end, written);
    if (written) {
      const std::byte* base = base_.load(std::memory_order_acquire);
      if (int r = pwrite_all(fd, base + offset, run_end - offset, pos); r < 0) return r;
      pos += run_end - offset;
    } else {
      // As in read(): zeros from our own page, not a fault on a memfd hole.
      for (uint64_t at = offset; at < run_end;) {
        const size_t n = std::min<uint64_t>(kZeroBytes, run_end - at);
        if (int r = pwrite_all(fd, kZeros, n, pos); r < 0) return r;
        at += n;
        pos += n;
      }
    }
    offset = run_end;
  }
  return 0;
}

int MemBackend::write_from(uint64_t offset, uint32_t length, int fd, uint64_t pos) noexcept {
  // Marked first, as in write(); a failed copy leaves the chunks marked,
  // which only costs a later discard a hole punch.
  mark_written(offset / kChunk, (offset + length - 1) / kChunk);
  const int r = pread_all(fd, base_.load(std::memory_order_acquire) + offset, length, pos);
  if (r == 0) return 0;
  // The kernel copies into our own mapping and stops short (0 bytes, or
  // EFAULT) where a page cannot be had: the memfd's tmpfs is full or its
  // cgroup at the limit. Asking the memfd for the range tells that apart
  // from a real I/O error, and out of space is what the writer should hear
  // (the block layer reports a space allocation error), not EIO.
  if (::fallocate(memfd_.get(), 0, static_cast<off_t>(offset), length) != 0 &&
      (errno == ENOSPC || errno == ENOMEM))
    return -ENOSPC;
  return r;
}

int MemBackend::zero(uint64_t offset, uint64_t length) noexcept {
  const uint64_t end = offset + length;
  const uint64_t size = this->size();
  // The last chunk may be shorter than kChunk; reaching the end of the device
  // covers it completely.
  const uint64_t full_begin = std::min((offset + kChunk - 1) / kChunk * kChunk, size);
  const uint64_t full_end = end == size ? size : end / kChunk * kChunk;
  if (full_begin >= full_end) {
    zero_partial(offset, end);
    return 0;
  }
  zero_partial(offset, full_begin);
  zero_partial(full_end, end);
  return release_chunks(full_begin / kChunk, (full_end + kChunk - 1) / kChunk);
}

void MemBackend::zero_partial(uint64_t begin, uint64_t end) noexcept {
  while (begin < end) {
    const uint64_t chunk = begin / kChunk;
    const uint64_t stop = std::min(end, (chunk + 1) * kChunk);
    // An unwritten chunk is already zeros; touching it would allocate.
    if (chunk_written(chunk))
      std::memset(base_.load(std::memory_order_acquire) + begin, 0, stop - begin);
    begin = stop;
  }
}

int MemBackend::release_chunks(uint64_t first_chunk, uint64_t end_chunk) noexcept {
  // One hole punch per bitmap word at most (4 MiB), narrowed to the chunks
  // that were written, so discarding a huge never-written range makes no
  // system calls at all.
  for (uint64_t w = first_chunk / kWordBits; w * kWordBits < end_chunk; ++w) {
    const uint64_t word_first = w * kWordBits;
    const uint64_t lo = std::max(first_chunk, word_first) - word_first;
    const uint64_t hi = std::min(end_chunk, word_first + kWordBits) - 1 - word_first;
    const uint64_t mask = bit_range(lo, hi);
    std::atomic_ref<uint64_t> word(words_[w]);
    if ((word.load(kOrder) & mask) == 0) continue;

    // Clear first, punch second: readers in between already get zeros from
    // the bitmap, and a chunk whose bit is clear is never left holding data.
    const uint64_t held = word.fetch_and(~mask, kOrder) & mask;
    if (held == 0) continue;
    // Not clipped to size_: a hole ending inside the last page would only
    // zero that page, and punching past EOF is harmless with KEEP_SIZE.
    const uint64_t begin = (word_first + std::countr_zero(held)) * kChunk;
    const uint64_t end = (word_first + kWordBits - std::countl_zero(held)) * kChunk;
    if (::fallocate(memfd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    static_cast<off_t>(begin), static_cast<off_t>(end - begin)) != 0) {
      const int err = errno;
      // The data is still there, so it must stay visible.
      word.fetch_or(held, kOrder);
      return -err;
    }
  }
  return 0;
}

}  // namespace ublkd
