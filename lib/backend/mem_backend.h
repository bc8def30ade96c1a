// A RAM disk that only costs memory for what has been written. The data lives
// in a memfd rather than anonymous memory so that the daemon can park the fd
// (e.g. in systemd's fd store) and a restarted daemon can adopt() it with the
// contents intact.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "backend/backend.h"
#include "base/error.h"
#include "base/mapping.h"
#include "base/unique_fd.h"

namespace ublkd {

class MemBackend final : public Backend {
 public:
  // Unit of allocation tracking: a chunk is either known to be all zeros (and
  // is never touched through the mapping) or may hold data. Whole chunks are
  // what DISCARD / WRITE_ZEROES can hand back to the kernel.
  static constexpr uint32_t kChunkSize = 64 * 1024;
  // The largest device, also after a resize: the chunk bitmap's address
  // space is reserved for it up front (32 MiB, only touched pages cost).
  static constexpr uint64_t kMaxSize = uint64_t{16} << 40;

  // A new, all-zero device of `size` bytes (> 0, a multiple of 512).
  static Result<std::unique_ptr<MemBackend>> create(uint64_t size);

  // Takes over a memfd that an earlier MemBackend of the same size created
  // (typically in a previous daemon process). Which chunks hold data is
  // recovered from the memfd's holes, so the result behaves exactly like the
  // backend that wrote it. A longer memfd (a shrink never makes it shorter,
  // see resize()) is served at `size`, the rest punched out.
  static Result<std::unique_ptr<MemBackend>> adopt(UniqueFd memfd, uint64_t size);

  ~MemBackend() override = default;
  MemBackend(const MemBackend&) = delete;
  MemBackend& operator=(const MemBackend&) = delete;

  std::string_view type() const override { return "mem"; }
  uint64_t size() const override { return size_.load(std::memory_order_acquire); }
  BackendFeatures features() const override;
  int handle(const IoRequest& req) noexcept override;
  bool user_copy() const override { return true; }
  Result<void> check_resize(uint64_t bytes, bool force) const override;
  // Growing maps the longer memfd anew and keeps the old mapping until the
  // backend goes (queue threads may still be using it); shrinking zeroes
  // the range beyond and leaves the memfd's length, which is sealed
  // against shrinking (a request in flight there must not fault).
  Result<void> resize(uint64_t bytes) override;

  // The memfd holding the data; still owned by this backend. Callers that want
  // it to outlive the backend must dup() it.
  int memfd() const { return memfd_.get(); }

 private:
  MemBackend(UniqueFd memfd, Mapping data, Mapping bitmap, uint64_t size);

  // Maps `length` bytes of the memfd for the I/O path.
  static Result<Mapping> map_data(int memfd, uint64_t length);
  Result<uint64_t> memfd_length() const;
  // Punches [begin, end) of the memfd out: it reads as zeros.
  Result<void> punch(uint64_t begin, uint64_t end);

  static Result<std::unique_ptr<MemBackend>> map(UniqueFd memfd, uint64_t size);
  Result<void> rebuild_bitmap();

  bool chunk_written(uint64_t chunk) const noexcept;
  void mark_written(uint64_t first_chunk, uint64_t last_chunk) noexcept;
  // Where the run of chunks from `offset` that are all `written` (or all
  // not) ends, at most `end`.
  uint64_t same_state_end(uint64_t offset, uint64_t end, bool written) const noexcept;

  // 0 or -errno.
  int read(uint64_t offset, uint32_t length, void* buffer) const noexcept;
  int write(uint64_t offset, uint32_t length, const void* buffer) noexcept;
  // The same through IoRequest::copy_fd.
  int read_to(uint64_t offset, uint32_t length, int fd, uint64_t pos) const noexcept;
  int write_from(uint64_t offset, uint32_t length, int fd, uint64_t pos) noexcept;
  int zero(uint64_t offset, uint64_t length) noexcept;
  void zero_partial(uint64_t begin, uint64_t end) noexcept;
  int release_chunks(uint64_t first_chunk, uint64_t end_chunk) noexcept;

  UniqueFd memfd_;
  Mapping data_;
  // Mappings a grow replaced; queue threads may still be inside them.
  std::vector<Mapping> retired_;
  Mapping bitmap_;
  std::atomic<uint64_t> size_;
  std::atomic<std::byte*> base_;  // data_ as bytes
  uint64_t* words_;  // bitmap_ as words; only accessed through atomic_ref
};

}  // namespace ublkd
