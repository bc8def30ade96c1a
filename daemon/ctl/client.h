// The transport half of ublkctl: one request line to ublkd's admin socket,
// one response line back (docs/admin-api.md). Every step has a deadline, so a
// daemon that is wedged, or a socket nobody serves, never hangs the caller.
//
// Errors carry a complete sentence for the user in message() (including the
// strerror text where there is one; print message(), not to_string()) and an
// errno value in code() for tests and callers that branch on the cause.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "base/error.h"
#include "base/unique_fd.h"

namespace ublkd::ctl {

// Far more than any real response (a list of thousands of devices), but a
// bound all the same: a peer that streams bytes without a newline must not
// make the client grow without limit.
inline constexpr size_t kMaxResponseBytes = 16 << 20;

struct ClientTimeouts {
  // Connecting to a local socket is immediate unless the daemon's accept
  // backlog is full, which only happens when it is stuck.
  std::chrono::milliseconds connect{5000};
  // From the end of the request to the end of the response line.
  std::chrono::milliseconds response{10000};
};

// Connects to the daemon's Unix socket. Failure: "cannot connect to ublkd at
// PATH: <strerror>" with the errno in code().
Result<UniqueFd> connect_to_daemon(const std::string& socket_path,
                                   std::chrono::milliseconds timeout);

// Sends `request` (one JSON document, without the newline) on a connected
// socket and returns the first response line, without its newline.
Result<std::string> exchange_on(int fd, std::string_view request,
                                std::chrono::milliseconds response_timeout);

// connect_to_daemon() + exchange_on(), closing the connection afterwards.
Result<std::string> exchange(const std::string& socket_path, std::string_view request,
                             const ClientTimeouts& timeouts);

}  // namespace ublkd::ctl
