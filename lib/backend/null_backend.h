// A device that stores nothing: every request completes at once without
// touching data. It measures the cost of the ublk and queue path alone
// (benchmarks, latency baselines) and exercises DISCARD / WRITE_ZEROES
// handling in the layers above without any storage behind them.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>

#include "backend/backend.h"
#include "base/error.h"

namespace ublkd {

class NullBackend final : public Backend {
 public:
  // A device of `size` bytes (> 0, a multiple of 512).
  static Result<std::unique_ptr<NullBackend>> create(uint64_t size);

  std::string_view type() const override { return "null"; }
  uint64_t size() const override { return size_.load(std::memory_order_relaxed); }
  BackendFeatures features() const override;
  // READ / WRITE return their length (a READ leaves the reader's buffer as
  // it was), FLUSH / DISCARD / WRITE_ZEROES return 0; a request past the end of the
  // device is -EINVAL and an unknown operation -EOPNOTSUPP.
  int handle(const IoRequest& req) noexcept override;
  bool touches_data() const override { return false; }
  // Any size: there is nothing to keep.
  Result<void> check_resize(uint64_t bytes, bool force) const override;
  Result<void> resize(uint64_t bytes) override;

 private:
  explicit NullBackend(uint64_t size) : size_(size) {}

  std::atomic<uint64_t> size_;
};

}  // namespace ublkd
