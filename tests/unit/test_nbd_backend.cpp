// The nbd backend through the Backend interface, on a real io_uring, against
// nbdkit started here on a Unix socket (memory and file plugins; the delay,
// error and multi-conn filters for faults). Tagged [env-nbdkit]: a machine
// without nbdkit skips them.
#include "backend/nbd_backend.h"
#include "skip.h"

#include <fcntl.h>
#include <liburing.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/unique_fd.h"
#include "temp_dir.h"
#include "test_queue.h"
#include "uapi/ublk.h"

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using ublkd::Backend;
using ublkd::IoOp;
using ublkd::IoRequest;
using ublkd::kIoQueued;
using ublkd::NbdBackend;
using ublkd::NbdBackendOptions;
using ublkd::QueueContext;
using ublkd::UniqueFd;

using ublkd::test::Buffer;
using ublkd::test::fill;
using ublkd::test::mismatch;
using ublkd::test::nonzero;
using ublkd::test::req;
using ublkd::test::TempDir;
using ublkd::test::TestQueue;

namespace {

constexpr uint64_t kMiB = 1024 * 1024;

std::optional<std::string> find_nbdkit() {
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    const size_t end = std::min(dirs.find(':', start), dirs.size());
    const std::string candidate = dirs.substr(start, end - start) + "/nbdkit";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return std::nullopt;
}

// One nbdkit process serving on dir/SOCK, in the foreground so that it is
// ours to kill; started again on the same socket by start().
class NbdKit {
 public:
  NbdKit(const TempDir& dir, std::vector<std::string> args, std::string name = "nbd.sock")
      : sock_(dir.file(name)), pidfile_(dir.file(name + ".pid")), args_(std::move(args)) {}
  ~NbdKit() { kill(SIGKILL); }
  NbdKit(const NbdKit&) = delete;
  NbdKit& operator=(const NbdKit&) = delete;

  void start(const std::vector<std::string>& args = {}) {
    REQUIRE(pid_ < 0);
    const auto& use = args.empty() ? args_ : args;
    ::unlink(pidfile_.c_str());
    ::unlink(sock_.c_str());  // left by a server that was killed
    std::vector<std::string> argv = {*find_nbdkit(), "-f",    "--exit-with-parent", "-U", sock_,
                                     "-P",           pidfile_};
    argv.insert(argv.end(), use.begin(), use.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      const int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 1);
      ::execv(cargv[0], cargv.data());
      ::_exit(127);
    }
    // nbdkit writes its pidfile once it listens.
    const auto until = Clock::now() + 10s;
    while (!std::filesystem::exists(pidfile_)) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        FAIL("nbdkit exited at start, status " << status);
      }
      REQUIRE(Clock::now() < until);
      std::this_thread::sleep_for(10ms);
    }
  }
  void kill(int sig) {
    if (pid_ < 0) return;
    ::kill(pid_, sig);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  std::string uri() const { return "nbd+unix:///?socket=" + sock_; }
  const std::string& socket() const { return sock_; }

 private:
  std::string sock_;
  std::string pidfile_;
  std::vector<std::string> args_;
  pid_t pid_ = -1;
};

NbdBackendOptions options(const std::string& uri) {
  NbdBackendOptions o;
  o.uri = uri;
  o.connect_timeout = 2s;
  o.request_timeout = 5s;
  o.reconnect_timeout = 10s;
  return o;
}

std::unique_ptr<NbdBackend> open_ok(const NbdBackendOptions& o) {
  return ublkd::test::opened(NbdBackend::open(o), o.uri);
}

ublkd::Error open_error(const NbdBackendOptions& o) {
  return ublkd::test::open_failed(NbdBackend::open(o));
}

#define NEED_NBDKIT()                                                \
  do {                                                               \
    if (!find_nbdkit()) SKIP_TEST("nbdkit is not installed (PATH)"); \
  } while (0)

std::optional<ublkd::BackendFact> fact(const Backend& b, const std::string& key) {
  for (auto& f : b.facts())
    if (f.key == key) return f;
  return std::nullopt;
}

}  // namespace

TEST_CASE("nbd backend: reads, writes, flush, trim and zero round trip with data checks",
          "[nbd][env][env-nbdkit]") {
  NEED_NBDKIT();
  TempDir dir;
  NbdKit kit(dir, {"memory", "64M"});
  kit.start();
  auto b = open_ok(options(kit.uri()));
  CHECK(b->size() == 64 * kMiB);
  const auto f = b->features();
  CHECK(f.volatile_cache);
  CHECK(f.fua);
  CHECK(f.discard);
  CHECK(f.write_zeroes);
  CHECK_FALSE(f.read_only);
  CHECK(f.max_queues == 0);  // the memory plugin allows multi-conn
  CHECK(f.max_io_bytes >= 512 * 1024);
  CHECK(b->request_timeout() == std::chrono::milliseconds(5000));
  CHECK(b->io_notes().find(kit.uri()) != std::string::npos);

  TestQueue q(*b);
  q.attach();
  Buffer w(1 * kMiB), r(1 * kMiB);
  struct Io {
    uint64_t offset;
    uint32_t length;
  };
  const Io ios[] = {{0, 4096}, {4096, 65536}, {3 * kMiB, 1 * kMiB}, {64 * kMiB - 512, 512}};
  uint32_t seed = 1;
  for (const Io& io : ios) {
    INFO("offset " << io.offset << " length " << io.length);
    fill(w, io.offset, seed, io.length);
    CHECK(q.serve(req(IoOp::kWrite, 1, io.offset, io.length, w.p, ublkd::uapi::kIoFlagFua)) ==
          static_cast<int>(io.length));
    std::memset(r.p, 0xEE, io.length);
    CHECK(q.serve(req(IoOp::kRead, 2, io.offset, io.length, r.p)) == static_cast<int>(io.length));
    CHECK(mismatch(r, io.offset, seed, io.length) == -1);
    ++seed;
  }
  CHECK(q.serve(req(IoOp::kFlush, 3, 0, 0)) == 0);

  // Many at once, on different tags (each with its own buffer while in
  // flight), then read back.
  std::vector<std::unique_ptr<Buffer>> bufs;
  for (uint16_t t = 0; t < 8; ++t) {
    bufs.push_back(std::make_unique<Buffer>(8192));
    fill(*bufs.back(), 0, 100 + t, 8192);
    REQUIRE_FALSE(q.submit(req(IoOp::kWrite, t, 16 * kMiB + t * 8192, 8192, bufs.back()->p)));
  }
  for (uint16_t t = 0; t < 8; ++t) CHECK(q.wait(t) == 8192);
  for (uint16_t t = 0; t < 8; ++t) {
    CHECK(q.serve(req(IoOp::kRead, t, 16 * kMiB + t * 8192, 8192, r.p)) == 8192);
    CHECK(mismatch(r, 0, 100 + t, 8192) == -1);
  }

  // Trim and zero: the range reads as zeros afterwards.
  fill(w, 0, 7, 65536);
  REQUIRE(q.serve(req(IoOp::kWrite, 4, 8 * kMiB, 65536, w.p)) == 65536);
  CHECK(q.serve(req(IoOp::kDiscard, 4, 8 * kMiB, 32768)) == 0);
  CHECK(q.serve(req(IoOp::kWriteZeroes, 4, 8 * kMiB + 32768, 32768, nullptr,
                    ublkd::uapi::kIoFlagNoUnmap)) == 0);
  CHECK(q.serve(req(IoOp::kRead, 5, 8 * kMiB, 65536, r.p)) == 65536);
  CHECK(nonzero(r, 65536) == -1);

  // Past the end: refused here, never sent.
  CHECK(q.serve(req(IoOp::kRead, 6, 64 * kMiB, 4096, r.p)) == -EIO);
  CHECK(q.late_answers() == 0);
}

TEST_CASE("nbd backend: multi-conn decides the queues, one connection each",
          "[nbd][env][env-nbdkit]") {
  NEED_NBDKIT();
  TempDir dir;
  SECTION("a server with multi-conn: a connection per queue, writes of one seen by the other") {
    NbdKit kit(dir, {"memory", "16M"});
    kit.start();
    auto b = open_ok(options(kit.uri()));
    CHECK(b->features().max_queues == 0);
    CHECK(std::get<bool>(fact(*b, "multi_conn")->value));
    CHECK_FALSE(fact(*b, "queues_note"));
    TestQueue q0(*b, 0), q1(*b, 1);
    q0.attach();
    q1.attach();
    Buffer w(4096), r(4096);
    fill(w, 0, 9, 4096);
    REQUIRE(q0.serve(req(IoOp::kWrite, 0, 4096, 4096, w.p)) == 4096);
    REQUIRE(q0.serve(req(IoOp::kFlush, 0, 0, 0)) == 0);
    REQUIRE(q1.serve(req(IoOp::kRead, 0, 4096, 4096, r.p)) == 4096);
    CHECK(mismatch(r, 0, 9, 4096) == -1);
  }
  SECTION("a server without: one queue, and the facts say why") {
    NbdKit kit(dir, {"--filter=multi-conn", "memory", "16M", "multi-conn-mode=disable"});
    kit.start();
    auto b = open_ok(options(kit.uri()));
    CHECK(b->features().max_queues == 1);
    CHECK_FALSE(std::get<bool>(fact(*b, "multi_conn")->value));
    REQUIRE(fact(*b, "queues_note"));
    CHECK(std::get<std::string>(fact(*b, "queues_note")->value).find("multi-conn") !=
          std::string::npos);
    CHECK(b->io_notes().find("one queue") != std::string::npos);
  }
}

TEST_CASE("nbd backend: connecting is bounded and errors name the URI", "[nbd][env][env-nbdkit]") {
  NEED_NBDKIT();
  TempDir dir;
  SECTION("nothing listens on the socket") {
    auto o = options("nbd+unix:///?socket=" + dir.file("none.sock"));
    const auto e = open_error(o);
    CHECK_THAT(e.message(), Catch::Contains(o.uri));
  }
  SECTION("a socket that accepts and never answers: connect_timeout") {
    UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(s);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = dir.file("mute.sock");
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    REQUIRE(::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(::listen(s.get(), 4) == 0);
    auto o = options("nbd+unix:///?socket=" + path);
    o.connect_timeout = 400ms;
    const auto t0 = Clock::now();
    const auto e = open_error(o);
    const auto took = Clock::now() - t0;
    CHECK(e.code() == ETIMEDOUT);
    CHECK_THAT(e.message(), Catch::Contains(o.uri) && Catch::Contains("connect_timeout"));
    CHECK(took >= 400ms);
    CHECK(took < 2s);
  }
  SECTION("an export the server does not have") {
    NbdKit kit(
        dir, {"--filter=exportname", "memory", "1M", "exportname-strict=true", "exportname=good"});
    kit.start();
    auto o = options("nbd+unix:///wrong?socket=" + kit.socket());
    const auto e = open_error(o);
    CHECK_THAT(e.message(), Catch::Contains(o.uri));
    auto good = options("nbd+unix:///good?socket=" + kit.socket());
    CHECK(open_ok(good)->size() == kMiB);
  }
  SECTION("a logical block size below the server's minimum") {
    NbdKit kit(dir, {"--filter=blocksize-policy", "memory", "1M", "blocksize-minimum=4096",
                     "blocksize-preferred=4096", "blocksize-maximum=1M"});
    kit.start();
    auto o = options(kit.uri());
    const auto e = open_error(o);
    CHECK(e.code() == EINVAL);
    CHECK_THAT(e.message(), Catch::Contains("logical_block_size 512") && Catch::Contains("4096") &&
                                Catch::Contains(o.uri));
    o.logical_block_size = 4096;
    auto b = open_ok(o);
    CHECK(b->features().max_io_bytes == kMiB);
  }
}

TEST_CASE("nbd backend: TLS-PSK, and a wrong key is refused naming the URI",
          "[nbd][env][env-nbdkit]") {
  NEED_NBDKIT();
  TempDir dir;
  const std::string keys = dir.file("keys.psk");
  const std::string wrong = dir.file("wrong.psk");
  std::ofstream(keys) << "ublkd:" << std::string(64, 'a') << "\n";
  std::ofstream(wrong) << "ublkd:" << std::string(64, 'b') << "\n";
  NbdKit kit(dir, {"--tls=require", "--tls-psk=" + keys, "memory", "8M"});
  kit.start();
  // The PSK identity is the URI's user (libnbd's default, the login name,
  // does not exist for a daemon).
  const std::string base = "nbds+unix://ublkd@/?socket=" + kit.socket();
  auto b = open_ok(options(base + "&tls-psk-file=" + keys));
  CHECK(std::get<bool>(fact(*b, "tls")->value));
  TestQueue q(*b);
  q.attach();
  Buffer w(65536), r(65536);
  fill(w, 0, 3, 65536);
  CHECK(q.serve(req(IoOp::kWrite, 0, 0, 65536, w.p)) == 65536);
  CHECK(q.serve(req(IoOp::kRead, 1, 0, 65536, r.p)) == 65536);
  CHECK(mismatch(r, 0, 3, 65536) == -1);

  const auto e = open_error(options(base + "&tls-psk-file=" + wrong));
  CHECK_THAT(e.message(), Catch::Contains(base));
  // Without TLS the server says no.
  CHECK_THAT(open_error(options(kit.uri())).message(), Catch::Contains(kit.uri()));
}

TEST_CASE("nbd backend: a server error reaches the request as EIO", "[nbd][env][env-nbdkit]") {
  NEED_NBDKIT();
  TempDir dir;
  const std::string trigger = dir.file("fail-now");
  NbdKit kit(dir, {"--filter=error", "memory", "8M", "error=EIO", "error-rate=100%",
                   "error-file=" + trigger});
  kit.start();
  auto b = open_ok(options(kit.uri()));
  TestQueue q(*b);
  q.attach();
  Buffer w(4096);
  fill(w, 0, 1, 4096);
  REQUIRE(q.serve(req(IoOp::kWrite, 0, 0, 4096, w.p)) == 4096);
  std::ofstream(trigger) << "x";
  CHECK(q.serve(req(IoOp::kWrite, 0, 0, 4096, w.p)) == -EIO);
  CHECK(q.serve(req(IoOp::kRead, 1, 0, 4096, w.p)) == -EIO);
  CHECK(q.serve(req(IoOp::kDiscard, 2, 0, 4096)) == -EIO);
  CHECK(q.serve(req(IoOp::kWriteZeroes, 2, 0, 4096)) == -EIO);
  // And the connection still serves once the server does.
  std::filesystem::remove(trigger);
  CHECK(q.serve(req(IoOp::kRead, 1, 0, 4096, w.p)) == 4096);
  CHECK(mismatch(w, 0, 1, 4096) == -1);
}

TEST_CASE("nbd backend: a transport error on a connection that stays up is retried on a new one",
          "[nbd][env][env-nbdkit]") {
  NEED_NBDKIT();
  TempDir dir;
  const std::string trigger = dir.file("fail-now");
  // ESHUTDOWN answers the command but leaves the connection open.
  NbdKit kit(dir, {"--filter=error", "memory", "8M", "error=ESHUTDOWN", "error-rate=100%",
                   "error-file=" + trigger});
  kit.start();
  auto o = options(kit.uri());
  o.request_timeout = 60s;
  auto b = open_ok(o);
  TestQueue q(*b);
  q.attach();
  Buffer w(4096);
  fill(w, 0, 3, 4096);
  REQUIRE(q.serve(req(IoOp::kWrite, 0, 0, 4096, w.p)) == 4096);
  std::ofstream(trigger) << "x";
  Buffer r(4096);
  REQUIRE_FALSE(q.submit(req(IoOp::kRead, 1, 0, 4096, r.p)));
  q.run_for(300ms);
  CHECK(q.state(1) == TestQueue::Tag::kWaiting);
  std::filesystem::remove(trigger);
  // Sent again on a new connection, well before request_timeout.
  CHECK(q.wait(1, 5s) == 4096);
  CHECK(mismatch(r, 0, 3, 4096) == -1);
  CHECK(std::get<uint64_t>(fact(*b, "reconnects")->value) >= 1);
}

TEST_CASE("nbd backend: a request past request_timeout fails, its late answer frees the tag",
          "[nbd][env][env-nbdkit]") {
  NEED_NBDKIT();
  TempDir dir;
  NbdKit kit(dir, {"--filter=delay", "memory", "8M", "delay-read=2"});
  kit.start();
  auto o = options(kit.uri());
  o.request_timeout = 500ms;
  auto b = open_ok(o);
  REQUIRE(b->request_timeout() == 500ms);
  TestQueue q(*b);
  q.attach();
  Buffer r(4096);
  const auto t0 = Clock::now();
  REQUIRE_FALSE(q.submit(req(IoOp::kRead, 3, 0, 4096, r.p)));
  CHECK(q.wait(3) == -ETIMEDOUT);  // failed by its deadline, as the worker does
  CHECK(q.failed_at(3) - t0 < 1s);
  CHECK(q.state(3) == TestQueue::Tag::kStale);
  // The server answers after its 2 s: the backend ends the tag's I/O.
  REQUIRE(q.run_until([&] { return q.state(3) == TestQueue::Tag::kFree; }, 5s));
  CHECK(q.late_answers() == 1);
  // Writes are not delayed: the connection serves on.
  Buffer w(4096);
  fill(w, 0, 5, 4096);
  CHECK(q.serve(req(IoOp::kWrite, 3, 0, 4096, w.p)) == 4096);
}

TEST_CASE("nbd backend: a killed server is reconnected, held writes re-sent, none lost",
          "[nbd][env][env-nbdkit]") {
  NEED_NBDKIT();
  TempDir dir;
  const std::string image = dir.file("disk.img");
  {
    std::ofstream f(image);
    f.close();
    std::filesystem::resize_file(image, 16 * kMiB);
  }
  // Writes wait 1 s in the server, so that some are in flight at the kill.
  NbdKit kit(dir, {"--filter=delay", "file", image, "delay-write=1"});
  kit.start();
  auto o = options(kit.uri());
  o.reconnect_timeout = 20s;
  auto b = open_ok(o);
  TestQueue q(*b);
  q.attach();

  constexpr uint16_t kWrites = 8;
  std::vector<std::unique_ptr<Buffer>> bufs;
  for (uint16_t t = 0; t < kWrites; ++t) {
    bufs.push_back(std::make_unique<Buffer>(65536));
    fill(*bufs.back(), t * 65536, 42, 65536);
  }
  // Acknowledged before the kill.
  REQUIRE(q.serve(req(IoOp::kWrite, 0, 0, 65536, bufs[0]->p)) == 65536);
  // In flight at the kill.
  for (uint16_t t = 1; t < kWrites / 2; ++t)
    REQUIRE_FALSE(q.submit(req(IoOp::kWrite, t, t * 65536, 65536, bufs[t]->p)));
  q.run_for(200ms);
  kit.kill(SIGKILL);
  const auto killed = Clock::now();
  // Submitted while the server is gone: held.
  for (uint16_t t = kWrites / 2; t < kWrites; ++t)
    REQUIRE_FALSE(q.submit(req(IoOp::kWrite, t, t * 65536, 65536, bufs[t]->p)));
  q.run_for(700ms);
  for (uint16_t t = 1; t < kWrites; ++t) {
    INFO("tag " << t);
    CHECK(q.state(t) == TestQueue::Tag::kWaiting);
    // Held until the reconnect gives up, not the request timeout.
    CHECK(q.deadline(t) >= killed + 19s);
  }
  kit.start({"file", image});  // back, without the delay
  for (uint16_t t = 1; t < kWrites; ++t) CHECK(q.wait(t) == 65536);
  CHECK(std::get<uint64_t>(fact(*b, "reconnects")->value) >= 1);
  REQUIRE(q.serve(req(IoOp::kFlush, 0, 0, 0)) == 0);
  // Everything acknowledged is there, read through the new connection.
  Buffer r(65536);
  for (uint16_t t = 0; t < kWrites; ++t) {
    INFO("block " << t);
    REQUIRE(q.serve(req(IoOp::kRead, 0, t * 65536, 65536, r.p)) == 65536);
    CHECK(mismatch(r, t * 65536, 42, 65536) == -1);
  }
}

TEST_CASE("nbd backend: a server that never comes back fails requests after reconnect_timeout",
          "[nbd][env][env-nbdkit]") {
  NEED_NBDKIT();
  TempDir dir;
  NbdKit kit(dir, {"memory", "8M"});
  kit.start();
  auto o = options(kit.uri());
  o.reconnect_timeout = 1s;
  auto b = open_ok(o);
  TestQueue q(*b);
  q.attach();
  Buffer w(4096);
  fill(w, 0, 1, 4096);
  REQUIRE(q.serve(req(IoOp::kWrite, 0, 0, 4096, w.p)) == 4096);
  kit.kill(SIGKILL);
  const auto t0 = Clock::now();
  // The first request finds the connection dead.
  REQUIRE_FALSE(q.submit(req(IoOp::kWrite, 1, 0, 4096, w.p)));
  REQUIRE_FALSE(q.submit(req(IoOp::kRead, 2, 0, 4096, w.p)));
  CHECK(q.wait(1, 5s) == -ETIMEDOUT);
  CHECK(q.wait(2, 5s) == -ETIMEDOUT);
  const auto took = q.failed_at(1) - t0;
  CHECK(took >= 900ms);
  CHECK(took < 2500ms);
  // The backend gives the tags back, and new requests fail at once.
  REQUIRE(q.run_until(
      [&] { return q.state(1) == TestQueue::Tag::kFree && q.state(2) == TestQueue::Tag::kFree; }));
  CHECK(q.submit(req(IoOp::kRead, 3, 0, 4096, w.p)) == -EIO);
  // The queue keeps trying: a server back later is used again.
  kit.start();
  REQUIRE(q.run_until([&] { return std::get<uint64_t>(fact(*b, "reconnects")->value) >= 1; }, 10s));
  CHECK(q.serve(req(IoOp::kRead, 3, 0, 4096, w.p)) == 4096);
}
