// A RAM disk that only costs memory for what has been written. The data lives
// in a memfd rather than anonymous memory so that the daemon can park the fd
// (e.g. in systemd's fd store) and a restarted daemon can adopt() it with the
// contents intact.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>

#include "backend/backend.h"
#include "backend/chunked_memory.h"
#include "base/error.h"
#include "base/unique_fd.h"

namespace ublkd {

class MemBackend final : public Backend {
 public:
  static constexpr uint32_t kChunkSize = ChunkedMemory::kChunkSize;
  // The largest device, also after a resize.
  static constexpr uint64_t kMaxSize = ChunkedMemory::kMaxSize;

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
  // Growing maps the longer memfd anew (ChunkedMemory::cover); shrinking
  // zeroes the range beyond and leaves the memfd's length, which is sealed
  // against shrinking (a request in flight there must not fault).
  Result<void> resize(uint64_t bytes) override;

  // The memfd holding the data; still owned by this backend. Callers that want
  // it to outlive the backend must dup() it.
  int memfd() const { return memfd_.get(); }

 private:
  MemBackend(UniqueFd memfd, std::unique_ptr<ChunkedMemory> memory, uint64_t size);

  static Result<std::unique_ptr<MemBackend>> map(UniqueFd memfd, uint64_t size);
  Result<uint64_t> memfd_length() const;
  // Punches [begin, end) of the memfd out: it reads as zeros.
  Result<void> punch(uint64_t begin, uint64_t end);

  UniqueFd memfd_;
  std::unique_ptr<ChunkedMemory> memory_;  // of memfd_
  std::atomic<uint64_t> size_;
};

}  // namespace ublkd
