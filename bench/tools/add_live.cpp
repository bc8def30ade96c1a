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

#include "ctl/client.h"

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

// One request, one reply, parsed; on the connection `fd`, within 60 s.
bool call(int fd, const json& req, json& reply, std::string& err) {
  auto line = ublkd::ctl::exchange_on(fd, req.dump(), std::chrono::seconds(60));
  if (!line) return err = line.error().message(), false;
  reply = json::parse(*line, nullptr, false);
  if (reply.is_discarded()) return err = "reply is not JSON: " + *line, false;
  return true;
}

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

  auto conn = ublkd::ctl::connect_to_daemon(path, std::chrono::seconds(5));
  if (!conn) {
    std::fprintf(stderr, "ublkd-bench-add-live: %s\n", conn.error().message().c_str());
    return 1;
  }
  const int fd = conn->get();

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
    if (!call(fd, add, reply, err)) {
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
    if (!call(fd, {{"op", "del"}, {"name", name}}, reply, err) || !reply.value("ok", false)) {
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
