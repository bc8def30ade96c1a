// The rbd backend through the Backend interface, on a real io_uring, against
// a single-node Ceph cluster that tests/ceph/with-cluster.sh starts around
// these cases (UBLKD_TEST_CEPH_CONF, UBLKD_TEST_CEPH_DIR). Tagged
// [env-ceph]: without that cluster they skip.
#include "backend/rbd_backend.h"
#include "skip.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "temp_dir.h"
#include "test_queue.h"

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using ublkd::IoOp;
using ublkd::RbdBackend;
using ublkd::RbdBackendOptions;
using ublkd::test::Buffer;
using ublkd::test::fill;
using ublkd::test::mismatch;
using ublkd::test::nonzero;
using ublkd::test::req;
using ublkd::test::TempDir;
using ublkd::test::TestQueue;

namespace {

constexpr uint64_t kMiB = 1024 * 1024;

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

#define NEED_CLUSTER()                                                                      \
  do {                                                                                      \
    if (env("UBLKD_TEST_CEPH_CONF").empty())                                                \
      SKIP_TEST("no Ceph cluster (run through tests/ceph/with-cluster.sh, as meson does)"); \
  } while (0)

// A name no earlier case or run used.
std::string fresh_image() {
  static int n = 0;
  return "t" + std::to_string(::getpid()) + "-" + std::to_string(++n);
}

RbdBackendOptions options(const std::string& image, uint64_t create_size = 64 * kMiB) {
  RbdBackendOptions o;
  o.conf = env("UBLKD_TEST_CEPH_CONF");
  o.image = image;
  o.create_size = create_size;
  o.connect_timeout = 10s;
  o.op_timeout = 10s;
  return o;
}

std::unique_ptr<RbdBackend> open_ok(const RbdBackendOptions& o) {
  return ublkd::test::opened(RbdBackend::open(o), o.image);
}

ublkd::Error open_error(const RbdBackendOptions& o) {
  return ublkd::test::open_failed(RbdBackend::open(o));
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// A client of its own process holding the image's lock: `rbd bench`
// writing, which takes the lock the way any writer (krbd, rbd-nbd, another
// ublkd) does. Its pid once the lock is held.
pid_t lock_holder(const std::string& image) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 1);
    ::dup2(null, 2);
    const std::string conf = env("UBLKD_TEST_CEPH_CONF");
    const std::string spec = "rbd/" + image;
    ::execlp("rbd", "rbd", "-c", conf.c_str(), "bench", "--io-type", "write", "--io-size", "4K",
             "--io-threads", "1", "--io-total", "64G", spec.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}

int osd_pid() {
  std::ifstream f(env("UBLKD_TEST_CEPH_DIR") + "/osd.0.pid");
  int pid = 0;
  f >> pid;
  REQUIRE(pid > 0);
  return pid;
}

// The cluster's only OSD, stopped (SIGSTOP): nothing answers until it is
// thawed, by thaw() or at the end of the scope.
class FrozenOsd {
 public:
  FrozenOsd() : pid_(osd_pid()) { REQUIRE(::kill(pid_, SIGSTOP) == 0); }
  ~FrozenOsd() { thaw(); }
  FrozenOsd(const FrozenOsd&) = delete;
  FrozenOsd& operator=(const FrozenOsd&) = delete;
  void thaw() { ::kill(pid_, SIGCONT); }

 private:
  int pid_;
};

// The backend's last_error fact, or "".
std::string last_error(const RbdBackend& b) {
  for (const auto& fact : b.facts()) {
    if (fact.key == "last_error") return std::get<std::string>(fact.value);
  }
  return {};
}

}  // namespace

TEST_CASE("rbd backend: reads, writes, flush, discard and write-zeroes round trip on two queues",
          "[rbd][env][env-ceph]") {
  NEED_CLUSTER();
  auto b = open_ok(options(fresh_image()));
  REQUIRE(b->size() == 64 * kMiB);
  const auto f = b->features();
  CHECK(f.discard);
  CHECK(f.write_zeroes);
  CHECK_FALSE(f.read_only);
  TestQueue q0(*b, 0, 16), q1(*b, 1, 16);
  q0.attach();
  q1.attach();

  // Sixteen writes in flight on each queue at once, then every byte read
  // back through the other queue.
  constexpr uint32_t kLen = 64 * 1024;
  std::vector<std::unique_ptr<Buffer>> bufs;
  for (uint16_t t = 0; t < 32; ++t) {
    bufs.push_back(std::make_unique<Buffer>(kLen));
    fill(*bufs.back(), t * kLen, 7, kLen);
    TestQueue& q = t < 16 ? q0 : q1;
    REQUIRE_FALSE(q.submit(req(IoOp::kWrite, t % 16, t * kLen, kLen, bufs.back()->p)));
  }
  for (uint16_t t = 0; t < 16; ++t) {
    CHECK(q0.wait(t) == static_cast<int>(kLen));
    CHECK(q1.wait(t) == static_cast<int>(kLen));
  }
  if (f.volatile_cache) CHECK(q0.serve(req(IoOp::kFlush, 0, 0, 0)) == 0);
  for (uint16_t t = 0; t < 32; ++t) {
    Buffer rb(kLen);
    TestQueue& q = t < 16 ? q1 : q0;
    REQUIRE(q.serve(req(IoOp::kRead, 1, t * kLen, kLen, rb.p)) == static_cast<int>(kLen));
    INFO("block " << t);
    CHECK(mismatch(rb, t * kLen, 7, kLen) == -1);
  }

  // WRITE_ZEROES reads back as zeros; DISCARD succeeds (it need not zero).
  CHECK(q0.serve(req(IoOp::kWriteZeroes, 2, 0, kLen)) == 0);
  Buffer zb(kLen);
  REQUIRE(q0.serve(req(IoOp::kRead, 3, 0, kLen, zb.p)) == static_cast<int>(kLen));
  CHECK(nonzero(zb, kLen) == -1);
  CHECK(q1.serve(req(IoOp::kDiscard, 4, 4 * kMiB, 4 * kMiB)) == 0);

  // Past the end: refused without asking the cluster.
  Buffer eb(4096);
  CHECK(q0.serve(req(IoOp::kRead, 5, 64 * kMiB, 4096, eb.p)) == -EIO);
  q0.detach();
  q1.detach();
  CHECK(b->sync().ok());
}

TEST_CASE("rbd backend: devices of one cluster and client share one connection",
          "[rbd][env][env-ceph]") {
  NEED_CLUSTER();
  const auto o1 = options(fresh_image());
  const auto o2 = options(fresh_image());
  CHECK(RbdBackend::cluster_users(o1) == 0);
  {
    auto a = open_ok(o1);
    auto b = open_ok(o2);
    CHECK(RbdBackend::cluster_users(o1) == 2);
  }
  CHECK(RbdBackend::cluster_users(o1) == 0);
}

TEST_CASE("rbd backend: a second writer is refused while the first holds the image's lock",
          "[rbd][env][env-ceph]") {
  NEED_CLUSTER();
  const auto o = options(fresh_image());
  auto owner = open_ok(o);
  // A connection of its own, as another host's ublkd would have.
  auto other = o;
  other.op_timeout = 11s;
  const auto t0 = Clock::now();
  const auto e = open_error(other);
  INFO(e.to_string());
  CHECK(e.code() == EBUSY);
  CHECK(contains(e.to_string(), "rbd image rbd/" + o.image));
  CHECK(contains(e.to_string(), "in use"));
  CHECK(Clock::now() - t0 < 20s);

  // Read-only: no lock, so it opens beside the owner, and refuses writes.
  auto ro = other;
  ro.read_only = true;
  ro.create_size = 0;
  auto reader = open_ok(ro);
  CHECK(reader->features().read_only);
  TestQueue q(*reader);
  q.attach();
  Buffer b(4096);
  CHECK(q.serve(req(IoOp::kRead, 0, 0, 4096, b.p)) == 4096);
  CHECK(q.serve(req(IoOp::kWrite, 1, 0, 4096, b.p)) == -EROFS);
  q.detach();

  // Once the owner closes, the lock is free at once.
  owner.reset();
  auto next = open_ok(other);
  CHECK(next->size() == 64 * kMiB);
}

TEST_CASE("rbd backend: errors name the image and say what is wrong", "[rbd][env][env-ceph]") {
  NEED_CLUSTER();
  SECTION("no such image") {
    const auto e = open_error(options(fresh_image(), 0));
    CHECK(e.code() == ENOENT);
    CHECK(contains(e.to_string(), "no such image"));
    CHECK(contains(e.to_string(), "rbd create"));
  }
  SECTION("no such pool") {
    auto o = options(fresh_image());
    o.pool = "nopool";
    const auto e = open_error(o);
    CHECK(e.code() == ENOENT);
    CHECK(contains(e.to_string(), "no pool nopool"));
  }
  SECTION("a user without write caps") {
    auto o = options(fresh_image());
    open_ok(o).reset();
    o.create_size = 0;
    o.client_id = "ublkd-ro";
    o.keyring = env("UBLKD_TEST_CEPH_DIR") + "/client.ublkd-ro.keyring";
    const auto e = open_error(o);
    INFO(e.to_string());
    CHECK((e.code() == EPERM || e.code() == EACCES || e.code() == EBUSY));
    CHECK(contains(e.to_string(), "rbd image rbd/" + o.image));
    // The same user reads.
    o.read_only = true;
    auto r = open_ok(o);
    CHECK(r->size() == 64 * kMiB);
  }
  SECTION("a keyring that is not there") {
    auto o = options(fresh_image());
    o.keyring = "/nonexistent/keyring";
    const auto e = open_error(o);
    CHECK(e.code() == ENOENT);
    CHECK(contains(e.to_string(), "/nonexistent/keyring"));
  }
  SECTION("monitors that do not answer: bounded by connect_timeout") {
    TempDir dir;
    const std::string conf = dir.file("ceph.conf");
    std::ofstream(conf) << "[global]\nmon_host = 127.0.0.1:1\nauth_client_required = none\n";
    auto o = options(fresh_image());
    o.conf = conf;
    o.connect_timeout = 2s;
    const auto t0 = Clock::now();
    const auto e = open_error(o);
    INFO(e.to_string());
    CHECK(Clock::now() - t0 < 10s);
    CHECK(contains(e.to_string(), "connect_timeout"));
  }
}

TEST_CASE("rbd backend: an OSD that stops answering fails requests after op_timeout",
          "[rbd][env][env-ceph]") {
  NEED_CLUSTER();
  auto o = options(fresh_image());
  o.op_timeout = 3s;
  auto b = open_ok(o);
  TestQueue q(*b);
  q.attach();
  Buffer buf(4096);
  fill(buf, 0, 3, 4096);
  REQUIRE(q.serve(req(IoOp::kWrite, 0, 0, 4096, buf.p)) == 4096);

  FrozenOsd osd;
  const auto t0 = Clock::now();
  REQUIRE_FALSE(q.submit(req(IoOp::kWrite, 1, 4096, 4096, buf.p)));
  const int r = q.wait(1, 20s);
  const auto took = Clock::now() - t0;
  CHECK(r == -EIO);
  CHECK(took >= 2s);
  CHECK(took < 3s + 5s);
  CHECK(contains(last_error(*b), "write of 4096 bytes at 4096"));
  osd.thaw();

  // The OSD back: the device serves again, and what was written before is
  // still there.
  Buffer rb(4096);
  REQUIRE(q.serve(req(IoOp::kRead, 2, 0, 4096, rb.p), 30s) == 4096);
  CHECK(mismatch(rb, 0, 3, 4096) == -1);
  q.detach();
}

TEST_CASE(
    "rbd backend: a live writer elsewhere is never robbed of its lock; a dead one's passes on",
    "[rbd][env][env-ceph]") {
  NEED_CLUSTER();
  const auto o = options(fresh_image());
  open_ok(o).reset();  // created
  auto reopen = o;
  reopen.create_size = 0;
  const pid_t holder = lock_holder(o.image);
  struct Reap {
    pid_t pid;
    ~Reap() {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } reap{holder};
  // rbd bench, like krbd and rbd-nbd, would hand its lock over if asked:
  // the open must not ask. Refused once the holder writes (at once).
  std::string refusal;
  for (int i = 0; i < 100 && refusal.empty(); ++i) {
    std::this_thread::sleep_for(100ms);
    auto r = RbdBackend::open(reopen);
    if (r) continue;  // not holding it yet
    refusal = r.error().to_string();
    CHECK(r.error().code() == EBUSY);
  }
  INFO(refusal);
  REQUIRE_FALSE(refusal.empty());
  CHECK(contains(refusal, "still watches it"));
  CHECK(contains(refusal, "ceph osd blocklist add 127.0.0.1:"));
  std::this_thread::sleep_for(1s);
  REQUIRE(::waitpid(holder, nullptr, WNOHANG) == 0);  // it still writes: nothing taken

  REQUIRE(::kill(holder, SIGKILL) == 0);
  ::waitpid(holder, nullptr, 0);
  // Dead, but its watch lasts until Ceph times it out: a new device is
  // still refused...
  const auto e = open_error(reopen);
  CHECK(e.code() == EBUSY);
  // ...while a recovery waits for Ceph to let go (30 s by default).
  reopen.take_over = true;
  const auto t0 = Clock::now();
  auto b = open_ok(reopen);
  const auto took = std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - t0);
  CHECK(took < 45s);
  WARN("the lock passed on " << took.count() << " s after its holder was killed");
}

TEST_CASE("rbd backend: an image the cluster grows grows the backend, and the watch says so",
          "[rbd][env][env-ceph]") {
  NEED_CLUSTER();
  const auto o = options(fresh_image());
  auto b = open_ok(o);
  std::atomic<int> calls{0};
  b->watch_size([&calls] { ++calls; });
  TestQueue q(*b);
  q.attach();
  Buffer buf(4096);
  CHECK(q.serve(req(IoOp::kRead, 0, 100 * kMiB, 4096, buf.p)) == -EIO);  // past the end

  const std::string cmd =
      "rbd -c '" + o.conf + "' resize --size 128M rbd/" + o.image + " >/dev/null 2>&1";
  REQUIRE(std::system(cmd.c_str()) == 0);
  const auto until = Clock::now() + 10s;
  while (calls == 0 && Clock::now() < until) std::this_thread::sleep_for(20ms);
  REQUIRE(calls > 0);
  CHECK(b->size() == 128 * kMiB);
  fill(buf, 100 * kMiB, 9, 4096);
  CHECK(q.serve(req(IoOp::kWrite, 1, 100 * kMiB, 4096, buf.p)) == 4096);
  Buffer rb(4096);
  CHECK(q.serve(req(IoOp::kRead, 2, 100 * kMiB, 4096, rb.p)) == 4096);
  CHECK(mismatch(rb, 100 * kMiB, 9, 4096) == -1);
  q.detach();
}

TEST_CASE("rbd backend: a flush the OSD leaves unanswered fails, and is named as a flush",
          "[rbd][env][env-ceph]") {
  NEED_CLUSTER();
  auto o = options(fresh_image());
  o.op_timeout = 3s;
  auto b = open_ok(o);
  TestQueue q(*b);
  q.attach();
  Buffer buf(4096);
  fill(buf, 0, 5, 4096);
  // The block layer's flush has sector -1 and no length.
  const uint64_t flush_offset = ~uint64_t{0} << 9;
  REQUIRE(q.serve(req(IoOp::kWrite, 0, 0, 4096, buf.p)) == 4096);
  // librbd's cache writes through until the first flush, and back after it:
  // the next write (to the object written above, so no object map update
  // is needed) waits in the cache for the flush below.
  REQUIRE(q.serve(req(IoOp::kFlush, 1, flush_offset, 0)) == 0);
  fill(buf, 4096, 6, 4096);
  REQUIRE(q.serve(req(IoOp::kWrite, 2, 4096, 4096, buf.p)) == 4096);

  FrozenOsd osd;
  const auto t0 = Clock::now();
  REQUIRE_FALSE(q.submit(req(IoOp::kFlush, 3, flush_offset, 0)));
  const int r = q.wait(3, 20s);
  const auto took = Clock::now() - t0;
  CHECK(r == -EIO);
  CHECK(took >= 2s);
  CHECK(took < 3s + 5s);
  const std::string error = last_error(*b);
  INFO(error);
  CHECK(error.starts_with("flush: "));
  CHECK_FALSE(contains(error, "bytes at"));
  osd.thaw();

  Buffer rb(4096);
  REQUIRE(q.serve(req(IoOp::kRead, 4, 4096, 4096, rb.p), 30s) == 4096);
  CHECK(mismatch(rb, 4096, 6, 4096) == -1);
  q.detach();
}
