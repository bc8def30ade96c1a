// The interface every storage backend implements. It is deliberately small:
// a backend describes itself (size, what it supports) and serves requests on
// the queue thread that received them. A new backend is one new file.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "base/error.h"

namespace ublkd {

// Block operations the queue worker hands to a backend. The values are the
// kernel's UBLK_IO_OP_* numbers so the worker can pass them through.
enum class IoOp : uint8_t {
  kRead = 0,
  kWrite = 1,
  kFlush = 2,
  kDiscard = 3,
  kWriteZeroes = 5,
};

struct IoRequest {
  IoOp op;
  uint32_t flags;   // UBLK_IO_F_* bits (FUA, NOUNMAP, ...)
  uint64_t offset;  // bytes from the start of the device
  uint32_t length;  // bytes; 0 for FLUSH
  void* buffer;     // the tag's buffer: READ fills it, WRITE reads it
  uint16_t queue;
  uint16_t tag;
};

struct BackendFeatures {
  // The device has a write cache that FLUSH must drain; the kernel only sends
  // FLUSH to devices that advertise one.
  bool volatile_cache = false;
  // The kernel only sends DISCARD / WRITE_ZEROES when these are advertised.
  bool discard = false;
  bool write_zeroes = false;
  uint32_t discard_granularity = 0;  // bytes; 0 = logical block size
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view type() const = 0;
  virtual uint64_t size() const = 0;
  virtual BackendFeatures features() const = 0;

  // Serves one request on the calling queue thread and returns the ublk
  // result: bytes transferred for READ/WRITE, 0 for FLUSH/DISCARD/
  // WRITE_ZEROES, or -errno. Implementations must be safe to call from
  // several queue threads at once and must not block on anything but the
  // backing storage itself.
  virtual int handle(const IoRequest& req) noexcept = 0;
};

}  // namespace ublkd
