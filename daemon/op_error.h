// How a daemon operation (add, del, up, upgrade, ...) fails, in the terms
// the admin API reports (api.cpp maps each kind to its error code). Errors
// from below carry an errno; failure_of() is the one place that turns an
// errno into a kind (refusal_of() for requests that may be refused as such).
#pragma once

#include <cerrno>
#include <string>

#include "base/error.h"

namespace ublkd {

enum class Failure {
  kInvalidSpec,
  kExists,
  kNotFound,
  kBusy,
  kBackend,
  kKernel,
  kTimeout,
  kIo,
  kShuttingDown,
  kInvalidRequest,
  // Neither the kernel nor the backend can do that (nothing changed).
  kUnsupported,
  // It would drop data that was written; asking with force does it.
  kWouldLoseData,
};

struct OpError {
  Failure kind;
  std::string message;
};

// The kind of a failure that came from the kernel or the device: a timeout,
// a start cut short by the shutdown (ECANCELED), or the kernel's refusal.
inline Failure failure_of(int code) {
  switch (code) {
    case ETIMEDOUT: return Failure::kTimeout;
    case ECANCELED: return Failure::kShuttingDown;
    default: return Failure::kKernel;
  }
}

// The kind of a failure of a request the kernel or a backend may refuse
// as such (a resize): a bad value, what neither can do, data in the way;
// anything else as failure_of().
inline Failure refusal_of(int code) {
  switch (code) {
    case EINVAL: return Failure::kInvalidRequest;
    case EOPNOTSUPP:
    case EROFS: return Failure::kUnsupported;
    case ENOTEMPTY: return Failure::kWouldLoseData;
    default: return failure_of(code);
  }
}

// What a daemon operation returns.
template <typename T>
using OpResult = Result<T, OpError>;

}  // namespace ublkd
