// ublkd-admin-send: puts raw bytes on ublkd's admin socket and prints what
// comes back, for tests that need requests ublkctl would never send
// (malformed JSON, binary garbage, oversized lines, silence).
//
//   ublkd-admin-send [--hold-ms N] [--timeout-ms N] [--lines N] SOCKET < BYTES
//
// Sends standard input exactly as it is (no newline added), then reads until
// the daemon closes the connection, --lines complete lines have arrived, or
// --timeout-ms (default 15000) passes, printing every byte received. With
// --hold-ms, waits that long after connecting before sending. The last line
// on standard error says how the exchange ended: "closed-by-peer after N ms",
// "lines after N ms" or "timeout after N ms"; exit 0 for all three, 1 if the
// socket could not be used at all.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

namespace {

using Clock = std::chrono::steady_clock;

long ms_since(Clock::time_point t) {
  return static_cast<long>(
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count());
}

int usage() {
  std::fprintf(stderr,
               "usage: ublkd-admin-send [--hold-ms N] [--timeout-ms N] [--lines N] SOCKET < BYTES\n");
  return 1;
}

bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  long hold_ms = 0;
  long timeout_ms = 15000;
  long want_lines = 0;
  const char* path = nullptr;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--hold-ms" || a == "--timeout-ms" || a == "--lines") && i + 1 < argc) {
      long& v = a == "--hold-ms" ? hold_ms : a == "--lines" ? want_lines : timeout_ms;
      v = std::strtol(argv[++i], nullptr, 10);
    } else if (a == "-h" || a == "--help") {
      usage();
      return 0;
    } else if (path == nullptr && !a.empty() && a[0] != '-') {
      path = argv[i];
    } else {
      return usage();
    }
  }
  if (path == nullptr) return usage();

  std::string input;
  char buf[65536];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, stdin)) > 0;) input.append(buf, n);

  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (std::strlen(path) >= sizeof addr.sun_path) {
    std::fprintf(stderr, "socket path too long: %s\n", path);
    return 1;
  }
  std::strcpy(addr.sun_path, path);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::fprintf(stderr, "connect %s: %s\n", path, std::strerror(errno));
    return 1;
  }
  const auto start = Clock::now();
  if (hold_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(hold_ms));
  // A daemon that closes the connection part-way (a line over the limit)
  // makes the rest of the send fail; what it answered is still to be read.
  if (!input.empty() && !write_all(fd, input.data(), input.size())) {
    std::fprintf(stderr, "send stopped after an error: %s\n", std::strerror(errno));
  }

  long lines = 0;
  for (;;) {
    const long left = timeout_ms - ms_since(start);
    if (left <= 0) {
      std::fflush(stdout);
      std::fprintf(stderr, "timeout after %ld ms\n", ms_since(start));
      return 0;
    }
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(left));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::fflush(stdout);
      std::fprintf(stderr, "closed-by-peer after %ld ms%s%s\n", ms_since(start),
                   n < 0 ? ": " : "", n < 0 ? std::strerror(errno) : "");
      return 0;
    }
    std::fwrite(buf, 1, static_cast<size_t>(n), stdout);
    std::fflush(stdout);
    for (ssize_t i = 0; i < n; ++i) lines += buf[i] == '\n' ? 1 : 0;
    if (want_lines > 0 && lines >= want_lines) {
      std::fprintf(stderr, "lines after %ld ms\n", ms_since(start));
      return 0;
    }
  }
}
