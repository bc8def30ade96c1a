#include "backend/chunked_memory.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "base/io_all.h"

namespace ublkd {

namespace {

constexpr uint64_t kChunk = ChunkedMemory::kChunkSize;
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

// The chunk bitmap's bytes for a file of `length` bytes.
uint64_t bitmap_bytes(uint64_t length) {
  const uint64_t chunks = (length + kChunk - 1) / kChunk;
  return (chunks + kWordBits - 1) / kWordBits * sizeof(uint64_t);
}

// What an unwritten range reads as, handed to pwrite a piece at a time.
constexpr size_t kZeroBytes = kChunk;
alignas(4096) const std::byte kZeros[kZeroBytes] = {};

}  // namespace

ChunkedMemory::ChunkedMemory(int fd, Mapping data, Mapping bitmap, bool writable)
    : fd_(fd),
      writable_(writable),
      data_(std::move(data)),
      bitmap_(std::move(bitmap)),
      base_(static_cast<std::byte*>(data_.get())),
      words_(static_cast<uint64_t*>(bitmap_.get())) {}

Result<Mapping> ChunkedMemory::map_data(int fd, uint64_t length, bool writable) {
  const int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* data = ::mmap(nullptr, length, prot, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (data == MAP_FAILED) {
    int err = errno;
    return Error(err, "map " + std::to_string(length) + " bytes of the file");
  }
  Mapping data_map(data, length);
  // Device contents do not belong in a core dump, and dumping a huge sparse
  // shared mapping would fault in every hole of it while the daemon dies.
  if (::madvise(data, length, MADV_DONTDUMP) != 0)
    return errno_error("exclude the file's mapping from core dumps");
  return data_map;
}

Result<void> ChunkedMemory::check_length(uint64_t length) {
  if (length == 0 || length > kMaxSize) {
    return Error(EINVAL, "a file in memory of " + std::to_string(length) +
                             " bytes; served are 1 to " + std::to_string(kMaxSize));
  }
  return {};
}

Result<std::unique_ptr<ChunkedMemory>> ChunkedMemory::map(int fd, uint64_t length,
                                                          bool writable) {
  if (auto r = check_length(length); !r) return r.error();
  auto data_map = map_data(fd, length, writable);
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

  auto memory = std::unique_ptr<ChunkedMemory>(
      new ChunkedMemory(fd, std::move(data_map).value(), std::move(bitmap_map), writable));
  if (auto r = memory->mark_data(length); !r) return r.error();
  return memory;
}

Result<void> ChunkedMemory::mark_data(uint64_t length) {
  // The invariant the I/O path relies on is "a chunk whose bit is clear is all
  // zeros in the file", so a chunk must be marked as soon as any page of it
  // is present, even if that page happens to be zeros.
  const auto end = static_cast<off_t>(length);
  off_t pos = 0;
  while (pos < end) {
    off_t data = ::lseek(fd_, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // no data after pos
      return errno_error("find data in the file");
    }
    if (data >= end) break;
    off_t hole = ::lseek(fd_, data, SEEK_HOLE);
    if (hole < 0) return errno_error("find a hole in the file");
    hole = std::min(hole, end);
    mark_written(static_cast<uint64_t>(data) / kChunk, static_cast<uint64_t>(hole - 1) / kChunk);
    pos = hole;
  }
  return {};
}

Result<void> ChunkedMemory::cover(uint64_t length) {
  if (auto r = check_length(length); !r) return r;
  if (data_.size() >= length) return {};
  auto grown = map_data(fd_, length, writable_);
  if (!grown) return grown.error();
  base_.store(static_cast<std::byte*>(grown->get()), std::memory_order_release);
  retired_.push_back(std::exchange(data_, std::move(grown).value()));
  return {};
}

void ChunkedMemory::forget(uint64_t from, uint64_t end) noexcept {
  const uint64_t first = (from + kChunk - 1) / kChunk;
  const uint64_t end_chunk = (end + kChunk - 1) / kChunk;
  if (first >= end_chunk) return;
  for (uint64_t w = first / kWordBits; w * kWordBits < end_chunk; ++w) {
    const uint64_t word_first = w * kWordBits;
    const uint64_t lo = std::max(first, word_first) - word_first;
    const uint64_t hi = std::min(end_chunk, word_first + kWordBits) - 1 - word_first;
    std::atomic_ref<uint64_t>(words_[w]).fetch_and(~bit_range(lo, hi), kOrder);
  }
}

bool ChunkedMemory::chunk_written(uint64_t chunk) const noexcept {
  std::atomic_ref<uint64_t> word(words_[chunk / kWordBits]);
  return (word.load(kOrder) >> (chunk % kWordBits)) & 1;
}

void ChunkedMemory::mark_written(uint64_t first_chunk, uint64_t last_chunk) noexcept {
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

uint64_t ChunkedMemory::same_state_end(uint64_t offset, uint64_t end,
                                       bool written) const noexcept {
  uint64_t run_end = std::min(end, (offset / kChunk + 1) * kChunk);
  while (run_end < end && chunk_written(run_end / kChunk) == written) {
    run_end = std::min(end, run_end + kChunk);
  }
  return run_end;
}

int ChunkedMemory::transfer(const IoRequest& req) noexcept {
  const bool read = req.op == IoOp::kRead;
  int r = 0;
  if (req.buffer != nullptr) {
    r = read ? this->read(req.offset, req.length, req.buffer)
             : write(req.offset, req.length, req.buffer);
  } else if (req.copy_fd >= 0) {
    r = read ? read_to(req.offset, req.length, req.copy_fd, req.copy_pos)
             : write_from(req.offset, req.length, req.copy_fd, req.copy_pos);
  } else {
    return -EINVAL;
  }
  return r < 0 ? r : static_cast<int>(req.length);
}

// The buffer path goes through the file, not the mapping: a page the file
// cannot get (its tmpfs full, its cgroup at the limit) is then an error for
// this request, where a copy through the mapping would be a SIGBUS for the
// whole daemon.
int ChunkedMemory::read(uint64_t offset, uint32_t length, void* buffer) const noexcept {
  auto* dst = static_cast<std::byte*>(buffer);
  const uint64_t end = offset + length;
  while (offset < end) {
    // Serve runs of chunks in the same state with one call.
    const bool written = chunk_written(offset / kChunk);
    const uint64_t run_end = same_state_end(offset, end, written);
    const size_t n = run_end - offset;
    if (written) {
      if (const int r = pread_all(fd_, dst, n, offset); r < 0) return r;
    } else {
      std::memset(dst, 0, n);
    }
    dst += n;
    offset = run_end;
  }
  return 0;
}

int ChunkedMemory::write(uint64_t offset, uint32_t length, const void* buffer) noexcept {
  // Mark before copying so that "bit clear" always implies "all zeros in the
  // file", which both zero() and mark_data() depend on.
  mark_written(offset / kChunk, (offset + length - 1) / kChunk);
  return pwrite_all(fd_, static_cast<const std::byte*>(buffer), length, offset);
}

int ChunkedMemory::read_to(uint64_t offset, uint32_t length, int fd,
                           uint64_t pos) const noexcept {
  const uint64_t end = offset + length;
  while (offset < end) {
    const bool written = chunk_written(offset / kChunk);
    const uint64_t run_end = same_state_end(offset, end, written);
    if (written) {
      const std::byte* base = base_.load(std::memory_order_acquire);
      if (pwrite_all(fd, base + offset, run_end - offset, pos) < 0) {
        // A hole inside a written chunk has no page, and the kernel's read
        // fault must allocate one, which fails when the file's tmpfs is
        // full: what was written must still be readable.
        if (int r = read_through(offset, run_end - offset, fd, pos); r < 0) return r;
      }
      pos += run_end - offset;
    } else {
      // As in read(): zeros from our own page, not a fault on a hole (which
      // would allocate a page of the file for nothing).
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

int ChunkedMemory::read_through(uint64_t offset, uint64_t length, int fd,
                                uint64_t pos) const noexcept {
  // Allocated only on this rare path. Page aligned for an O_DIRECT fd.
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> bounce(static_cast<std::byte*>(std::aligned_alloc(4096, kChunk)));
  if (!bounce) return -ENOMEM;
  for (uint64_t done = 0; done < length;) {
    const size_t n = std::min<uint64_t>(kChunk, length - done);
    if (int r = pread_all(fd_, bounce.get(), n, offset + done); r < 0) return r;
    if (int r = pwrite_all(fd, bounce.get(), n, pos + done); r < 0) return r;
    done += n;
  }
  return 0;
}

int ChunkedMemory::write_from(uint64_t offset, uint32_t length, int fd, uint64_t pos) noexcept {
  // Marked first, as in write(); a failed copy leaves the chunks marked,
  // which only costs a later discard a hole punch.
  mark_written(offset / kChunk, (offset + length - 1) / kChunk);
  const int r = pread_all(fd, base_.load(std::memory_order_acquire) + offset, length, pos);
  if (r == 0) return 0;
  // The kernel copies into our own mapping and stops short (0 bytes, or
  // EFAULT) where a page cannot be had: the file's tmpfs is full or its
  // cgroup at the limit. Asking the file for the range tells that apart
  // from a real I/O error, and out of space is what the writer should hear
  // (the block layer reports a space allocation error), not EIO.
  // KEEP_SIZE: a file that shrank under the request must not grow back.
  if (::fallocate(fd_, FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset), length) != 0 &&
      (errno == ENOSPC || errno == ENOMEM))
    return -ENOSPC;
  return r;
}

int ChunkedMemory::zero(uint64_t offset, uint64_t length, uint64_t end_of_file) noexcept {
  const uint64_t end = offset + length;
  // The last chunk may be shorter than kChunk; reaching the end of the file
  // covers it completely.
  const uint64_t full_begin = std::min((offset + kChunk - 1) / kChunk * kChunk, end_of_file);
  const uint64_t full_end = end == end_of_file ? end_of_file : end / kChunk * kChunk;
  if (full_begin >= full_end) return zero_partial(offset, end);
  if (const int r = zero_partial(offset, full_begin); r < 0) return r;
  if (const int r = zero_partial(full_end, end); r < 0) return r;
  return release_chunks(full_begin / kChunk, (full_end + kChunk - 1) / kChunk);
}

int ChunkedMemory::zero_partial(uint64_t begin, uint64_t end) noexcept {
  while (begin < end) {
    const uint64_t chunk = begin / kChunk;
    const uint64_t stop = std::min(end, (chunk + 1) * kChunk);
    // An unwritten chunk is already zeros; writing it would allocate. A part
    // of a chunk is less than kZeroBytes.
    if (chunk_written(chunk)) {
      if (const int r = pwrite_all(fd_, kZeros, stop - begin, begin); r < 0) return r;
    }
    begin = stop;
  }
  return 0;
}

int ChunkedMemory::release_chunks(uint64_t first_chunk, uint64_t end_chunk) noexcept {
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
    // Not clipped to the file's length: a hole ending inside the last page
    // would only zero that page, and punching past EOF is harmless with
    // KEEP_SIZE.
    const uint64_t begin = (word_first + std::countr_zero(held)) * kChunk;
    const uint64_t end = (word_first + kWordBits - std::countl_zero(held)) * kChunk;
    if (::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(begin),
                    static_cast<off_t>(end - begin)) != 0) {
      const int err = errno;
      // The data is still there, so it must stay visible.
      word.fetch_or(held, kOrder);
      return -err;
    }
  }
  return 0;
}

}  // namespace ublkd
