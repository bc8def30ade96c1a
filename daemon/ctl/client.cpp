#include "ctl/client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <thread>

#include "base/size.h"

namespace ublkd::ctl {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::string with_strerror(std::string message, int code) {
  message += ": ";
  message += std::strerror(code);
  return message;
}

Error connect_error(const std::string& path, int code) {
  return Error(code, with_strerror("cannot connect to ublkd at " + path, code));
}

// Waits until fd reports one of `events` (or an error or hang-up, which the
// next call on fd then reports). Returns false once the deadline has passed.
Result<bool> wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), INT_MAX)));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int code = errno;
      return Error(code, with_strerror("poll", code));
    }
    if (n > 0) return true;
  }
}

Error no_response(milliseconds timeout) {
  return Error(ETIMEDOUT, "no response from ublkd within " + format_duration(timeout));
}

Result<std::string> read_line(int fd, Clock::time_point deadline, milliseconds timeout) {
  std::string line;
  char chunk[16384];
  for (;;) {
    const ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
    if (n > 0) {
      const size_t scanned = line.size();
      line.append(chunk, static_cast<size_t>(n));
      if (size_t nl = line.find('\n', scanned); nl != std::string::npos) {
        // Anything after the newline would answer a request never sent.
        line.resize(nl);
        return line;
      }
      if (line.size() > kMaxResponseBytes) {
        return Error(EMSGSIZE, "the response from ublkd exceeds " +
                                   std::to_string(kMaxResponseBytes >> 20) +
                                   " MiB without ending its line");
      }
      continue;
    }
    // A reset is how a peer that closed with our request still unread looks;
    // to the user it is the same as a close.
    if (n == 0 || errno == ECONNRESET) {
      if (line.empty()) {
        return Error(ECONNRESET, "ublkd closed the connection without answering");
      }
      return Error(EPROTO, "ublkd closed the connection in the middle of its response");
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN) {
      const int code = errno;
      return Error(code, with_strerror("cannot read the response from ublkd", code));
    }
    auto ready = wait_for(fd, POLLIN, deadline);
    if (!ready) return ready.error();
    if (!*ready) return no_response(timeout);
  }
}

}  // namespace

Result<UniqueFd> connect_to_daemon(const std::string& socket_path, milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty()) return connect_error(socket_path, ENOENT);
  if (socket_path.size() >= sizeof(addr.sun_path)) return connect_error(socket_path, ENAMETOOLONG);
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());

  // Non-blocking, so that not even connect() can wait beyond the deadline.
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) {
    const int code = errno;
    return Error(code, with_strerror("cannot create a socket", code));
  }
  for (;;) {
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
      return fd;
    }
    const int err = errno;
    if (err == EAGAIN) {
      // The daemon's accept backlog is full. A non-blocking connect does not
      // wait for room, so poll for it by retrying.
      const auto now = Clock::now();
      if (now >= deadline) {
        return Error(ETIMEDOUT, "cannot connect to ublkd at " + socket_path +
                                    ": it accepted no connection within " +
                                    format_duration(timeout));
      }
      std::this_thread::sleep_for(std::min<Clock::duration>(milliseconds(10), deadline - now));
      continue;
    }
    if (err == EINPROGRESS || err == EINTR) {
      auto ready = wait_for(fd.get(), POLLOUT, deadline);
      if (!ready) return connect_error(socket_path, ready.error().code());
      if (!*ready) {
        return Error(ETIMEDOUT, "cannot connect to ublkd at " + socket_path +
                                    ": no connection within " + format_duration(timeout));
      }
      int so_error = 0;
      socklen_t len = sizeof(so_error);
      if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &so_error, &len) != 0) so_error = errno;
      if (so_error != 0) return connect_error(socket_path, so_error);
      return fd;
    }
    return connect_error(socket_path, err);
  }
}

Result<std::string> exchange_on(int fd, std::string_view request, milliseconds response_timeout) {
  const auto deadline = Clock::now() + response_timeout;
  std::string line(request);
  line += '\n';
  size_t sent = 0;
  while (sent < line.size()) {
    const ssize_t n = ::send(fd, line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
    if (n >= 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      auto ready = wait_for(fd, POLLOUT, deadline);
      if (!ready) return ready.error();
      if (!*ready) return no_response(response_timeout);
      continue;
    }
    if (errno == EPIPE || errno == ECONNRESET) {
      // The daemon may have answered before closing without reading, as it
      // does for `busy` and `permission-denied`; that answer is what the user
      // needs to see, and read_line() explains the close otherwise.
      break;
    }
    const int code = errno;
    return Error(code, with_strerror("cannot send the request to ublkd", code));
  }
  return read_line(fd, deadline, response_timeout);
}

Result<std::string> exchange(const std::string& socket_path, std::string_view request,
                             const ClientTimeouts& timeouts) {
  auto fd = connect_to_daemon(socket_path, timeouts.connect);
  if (!fd) return fd.error();
  return exchange_on(fd->get(), request, timeouts.response);
}

}  // namespace ublkd::ctl
