// The data path of a file whose pages are memory (a memfd, or a file on
// tmpfs): the mem backend's storage, and the file backend's for a file on
// tmpfs. It keeps, per 64 KiB chunk, whether the chunk may hold data, so
// that reading what was never written costs neither memory nor a copy from
// the file, and so that a discard hands whole chunks back to the kernel.
//
// The bitmap is right only while nothing else writes the file: the mem
// backend's memfd is its own, and the file backend holds its file's lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "base/error.h"
#include "base/mapping.h"

namespace ublkd {

class ChunkedMemory {
 public:
  // Unit of allocation tracking: a chunk is either known to be all zeros (and
  // is never touched through the mapping) or may hold data. Whole chunks are
  // what zero() can hand back to the kernel.
  static constexpr uint32_t kChunkSize = 64 * 1024;
  // The largest file, also after a grow: the chunk bitmap's address space is
  // reserved for it up front (32 MiB, only touched pages cost).
  static constexpr uint64_t kMaxSize = uint64_t{16} << 40;

  // Maps the first `length` (<= kMaxSize) bytes of `fd`, which the caller
  // keeps open for as long as this lives, read-only unless `writable`, and
  // marks the chunks that hold data, found from the file's holes.
  static Result<std::unique_ptr<ChunkedMemory>> map(int fd, uint64_t length, bool writable);
  // Whether a file of `length` bytes can be served (1 to kMaxSize).
  static Result<void> check_length(uint64_t length);

  ChunkedMemory(const ChunkedMemory&) = delete;
  ChunkedMemory& operator=(const ChunkedMemory&) = delete;

  // A READ or WRITE whichever way it carries its data: a buffer, or the
  // ublk char device under UBLK_F_USER_COPY (IoRequest::copy_fd); its
  // length or -errno. The caller has checked the range and the op.
  int transfer(const IoRequest& req) noexcept;

  // The I/O path; each returns 0 or -errno, for a range the caller has
  // checked against the file's length. Only the kernel touches the mapping
  // (in read_to / write_from), so a page that cannot be had is an error of
  // the request, never a SIGBUS.
  int read(uint64_t offset, uint32_t length, void* buffer) const noexcept;
  int write(uint64_t offset, uint32_t length, const void* buffer) noexcept;
  // The same through UBLK_F_USER_COPY: pwrite / pread on the ublk char
  // device `fd` at `pos`, from / into the mapping (one copy, by the kernel).
  int read_to(uint64_t offset, uint32_t length, int fd, uint64_t pos) const noexcept;
  int write_from(uint64_t offset, uint32_t length, int fd, uint64_t pos) noexcept;
  // Zeroes [offset, offset + length): whole chunks are punched out of the
  // file, the bytes around them written with zeros. `end` is the file's
  // length as served, so that its short last chunk counts as whole.
  int zero(uint64_t offset, uint64_t length, uint64_t end) noexcept;

  // After the file was cut to `from` bytes (from `end`): the chunks wholly
  // beyond it hold nothing any more, so that a later grow reads zeros there
  // without a fault. The chunk `from` falls in stays as it is.
  void forget(uint64_t from, uint64_t end) noexcept;

  // Maps the file anew once it is to grow beyond the mapping (a mapping may
  // reach beyond the end of the file); the old mapping
  // stays until this goes (queue threads may still be copying through it).
  Result<void> cover(uint64_t length);

 private:
  ChunkedMemory(int fd, Mapping data, Mapping bitmap, bool writable);

  static Result<Mapping> map_data(int fd, uint64_t length, bool writable);
  Result<void> mark_data(uint64_t length);

  bool chunk_written(uint64_t chunk) const noexcept;
  void mark_written(uint64_t first_chunk, uint64_t last_chunk) noexcept;
  // Where the run of chunks from `offset` that are all `written` (or all
  // not) ends, at most `end`.
  uint64_t same_state_end(uint64_t offset, uint64_t end, bool written) const noexcept;
  // read_to()'s way when the kernel cannot read the mapping: through a
  // buffer, from the file.
  int read_through(uint64_t offset, uint64_t length, int fd, uint64_t pos) const noexcept;
  int zero_partial(uint64_t begin, uint64_t end) noexcept;
  int release_chunks(uint64_t first_chunk, uint64_t end_chunk) noexcept;

  const int fd_;
  const bool writable_;
  Mapping data_;
  // Mappings a grow replaced; queue threads may still be inside them.
  std::vector<Mapping> retired_;
  Mapping bitmap_;
  std::atomic<std::byte*> base_;  // data_ as bytes
  uint64_t* words_;  // bitmap_ as words; only accessed through atomic_ref
};

}  // namespace ublkd
