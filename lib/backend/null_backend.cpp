#include "backend/null_backend.h"

#include <cerrno>
#include <climits>
#include <string>

namespace ublkd {

Result<std::unique_ptr<NullBackend>> NullBackend::create(uint64_t size) {
  if (size == 0) return Error(EINVAL, "null backend size must not be zero");
  if (size % 512 != 0) {
    return Error(EINVAL,
                 "null backend size " + std::to_string(size) + " is not a multiple of 512 bytes");
  }
  return std::unique_ptr<NullBackend>(new NullBackend(size));
}

Result<void> NullBackend::check_resize(uint64_t bytes, bool /*force*/) const {
  if (bytes == 0 || bytes % 512 != 0) {
    return Error(EINVAL, "null backend size " + std::to_string(bytes) +
                             " is not a positive multiple of 512 bytes");
  }
  return {};
}

Result<void> NullBackend::resize(uint64_t bytes) {
  if (auto r = check_resize(bytes, true); !r) return r;
  size_.store(bytes, std::memory_order_relaxed);
  return {};
}

BackendFeatures NullBackend::features() const {
  BackendFeatures f;
  // Nothing is ever cached, so there is nothing for FLUSH to drain; the
  // kernel then completes flushes itself instead of sending them.
  f.volatile_cache = false;
  // Advertised although they do nothing, so that the kernel sends them and
  // their path through the queue worker is exercised like any other.
  f.discard = true;
  f.write_zeroes = true;
  return f;
}

int NullBackend::handle(const IoRequest& req) noexcept {
  // A FLUSH carries no range (the block layer's flush request has sector -1).
  if (req.op == IoOp::kFlush) return 0;
  const bool known = req.op == IoOp::kRead || req.op == IoOp::kWrite || req.op == IoOp::kDiscard ||
                     req.op == IoOp::kWriteZeroes;
  if (!known) return -EOPNOTSUPP;
  // Written so that it cannot overflow for any offset.
  const uint64_t size = size_.load(std::memory_order_relaxed);
  if (req.offset > size || req.length > size - req.offset) return -EINVAL;
  if (req.op != IoOp::kRead && req.op != IoOp::kWrite) return 0;
  if (req.length > static_cast<uint32_t>(INT_MAX)) return -EINVAL;
  return static_cast<int>(req.length);
}

}  // namespace ublkd
