// What ublkd and ublkctl agree on over the admin socket (docs/admin-api.md):
// where the socket is by default, the limits of a request and the error
// codes. Both ends include this one header, so neither can drift.
#pragma once

#include <cstddef>
#include <string_view>

namespace ublkd {

inline constexpr std::string_view kDefaultSocketPath = "/run/ublkd/ublkd.sock";

namespace admin {

inline constexpr size_t kMaxRequestLine = 1 << 20;  // bytes, newline included
inline constexpr int kApiVersion = 1;

// Error codes of docs/admin-api.md.
namespace code {
inline constexpr const char* kInvalidJson = "invalid-json";
inline constexpr const char* kInvalidRequest = "invalid-request";
inline constexpr const char* kRequestTooLarge = "request-too-large";
inline constexpr const char* kUnknownOp = "unknown-op";
inline constexpr const char* kPermissionDenied = "permission-denied";
inline constexpr const char* kInvalidSpec = "invalid-spec";
inline constexpr const char* kExists = "exists";
inline constexpr const char* kNotFound = "not-found";
inline constexpr const char* kBusy = "busy";
inline constexpr const char* kBackendError = "backend-error";
inline constexpr const char* kKernelError = "kernel-error";
inline constexpr const char* kTimeout = "timeout";
inline constexpr const char* kIoError = "io-error";
inline constexpr const char* kShuttingDown = "shutting-down";
inline constexpr const char* kUnsupported = "unsupported";
inline constexpr const char* kWouldLoseData = "would-lose-data";
inline constexpr const char* kInternal = "internal";
}  // namespace code

}  // namespace admin
}  // namespace ublkd
