// ublkd-bench-add-live: how long a device takes from the `add` request to a
// block device that serves I/O, measured COUNT times over one admin
// connection, so neither process start-up nor connecting is counted.
//
//   ublkd-bench-add-live [--count N] [--size BYTES] [--queues N] SOCKET
//
// Each round sends an add of a mem device, waits for the reply, opens the
// /dev/ublkbN it names with O_DIRECT and reads its first 4 KiB: the time
// until that read returns is one sample. Then the device is deleted (not
// timed). Prints one JSON object on standard output:
//   {"count":N,"median_ms":M,"max_ms":X,"min_ms":Y,"reply_median_ms":R,
//    "samples_ms":[...]}
// Exit 1, with the reason on standard error, if any round fails.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

int usage(FILE* out, int rc) {
  std::fprintf(out,
               "usage: ublkd-bench-add-live [--count N] [--size BYTES] [--queues N] SOCKET\n"
               "Times add -> first 4 KiB read from /dev/ublkbN, N times (default 20),\n"
               "for a mem device of BYTES (default 64 MiB); prints JSON.\n");
  return rc;
}

class Conn {
 public:
  explicit Conn(int fd) : fd_(fd) {}
  ~Conn() { ::close(fd_); }
  // One request line out, one reply line back, within 60 s.
  bool call(const json& req, json& reply, std::string& err) {
    const std::string line = req.dump() + "\n";
    for (size_t off = 0; off < line.size();) {
      const ssize_t w = ::send(fd_, line.data() + off, line.size() - off, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return err = std::string("send: ") + std::strerror(errno), false;
      off += static_cast<size_t>(w);
    }
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    for (;;) {
      const auto nl = buf_.find('\n');
      if (nl != std::string::npos) {
        const std::string got = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        reply = json::parse(got, nullptr, false);
        if (reply.is_discarded()) return err = "reply is not JSON: " + got, false;
        return true;
      }
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return err = "no reply within 60 s", false;
      pollfd p{fd_, POLLIN, 0};
      const int r = ::poll(&p, 1, static_cast<int>(left.count()));
      if (r < 0 && errno != EINTR) return err = std::string("poll: ") + std::strerror(errno), false;
      if (r <= 0) continue;
      char chunk[65536];
      const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return err = "connection closed by ublkd", false;
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }

 private:
  int fd_;
  std::string buf_;
};

// Opens DEV with O_DIRECT and reads its first 4 KiB.
bool first_read(const std::string& dev, std::string& err) {
  const int fd = ::open(dev.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return err = "open " + dev + ": " + std::strerror(errno), false;
  void* buf = nullptr;
  if (::posix_memalign(&buf, 4096, 4096) != 0) {
    ::close(fd);
    return err = "out of memory", false;
  }
  const ssize_t n = ::pread(fd, buf, 4096, 0);
  const int saved = errno;
  std::free(buf);
  ::close(fd);
  if (n != 4096)
    return err = "read " + dev + ": " + (n < 0 ? std::strerror(saved) : "short"), false;
  return true;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  long count = 20;
  unsigned long long size = 64ull << 20;
  long queues = 2;
  const char* path = nullptr;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") return usage(stdout, 0);
    if ((a == "--count" || a == "--size" || a == "--queues") && i + 1 < argc) {
      char* end = nullptr;
      const unsigned long long v = std::strtoull(argv[++i], &end, 10);
      if (*end != '\0' || v == 0) {
        std::fprintf(stderr, "ublkd-bench-add-live: bad %s: %s\n", a.c_str(), argv[i]);
        return 2;
      }
      if (a == "--count")
        count = static_cast<long>(v);
      else if (a == "--size")
        size = v;
      else
        queues = static_cast<long>(v);
    } else if (path == nullptr && !a.empty() && a[0] != '-') {
      path = argv[i];
    } else {
      return usage(stderr, 2);
    }
  }
  if (path == nullptr) return usage(stderr, 2);

  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (std::strlen(path) >= sizeof addr.sun_path) {
    std::fprintf(stderr, "ublkd-bench-add-live: socket path too long: %s\n", path);
    return 2;
  }
  std::strcpy(addr.sun_path, path);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::fprintf(stderr, "ublkd-bench-add-live: connect %s: %s\n", path, std::strerror(errno));
    return 1;
  }
  Conn conn(fd);

  std::vector<double> samples, replies;
  for (long i = 0; i < count; ++i) {
    const std::string name = "addlat" + std::to_string(i);
    const json add = {
        {"op", "add"},
        {"id", i},
        {"spec",
         {{"name", name}, {"backend", {{"type", "mem"}, {"size", size}}}, {"queues", queues}}}};
    json reply;
    std::string err;
    const auto t0 = Clock::now();
    if (!conn.call(add, reply, err)) {
      std::fprintf(stderr, "ublkd-bench-add-live: add %s: %s\n", name.c_str(), err.c_str());
      return 1;
    }
    const auto t1 = Clock::now();
    if (!reply.value("ok", false)) {
      std::fprintf(stderr, "ublkd-bench-add-live: add %s refused: %s\n", name.c_str(),
                   reply.dump().c_str());
      return 1;
    }
    const std::string dev = reply["result"].value("block_device", "");
    if (!first_read(dev, err)) {
      std::fprintf(stderr, "ublkd-bench-add-live: %s: %s\n", name.c_str(), err.c_str());
      return 1;
    }
    const auto t2 = Clock::now();
    samples.push_back(ms_between(t0, t2));
    replies.push_back(ms_between(t0, t1));
    if (!conn.call({{"op", "del"}, {"name", name}}, reply, err) || !reply.value("ok", false)) {
      std::fprintf(stderr, "ublkd-bench-add-live: del %s: %s\n", name.c_str(),
                   err.empty() ? reply.dump().c_str() : err.c_str());
      return 1;
    }
  }
  const json out = {{"count", count},
                    {"median_ms", median(samples)},
                    {"max_ms", *std::max_element(samples.begin(), samples.end())},
                    {"min_ms", *std::min_element(samples.begin(), samples.end())},
                    {"reply_median_ms", median(replies)},
                    {"samples_ms", samples}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
