// The promise: a start under way can be cut short (SIGTERM), and nothing that
// waits in a start waits out the whole start timeout once it is. Without a
// ublk kernel driver this checks the pieces: the abort signal, the ring wait
// it wakes, the control device's bookkeeping around it (on a file that
// refuses every command), the primed-queues wait and the device's state.
#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "backend/null_backend.h"
#include "base/abort_signal.h"
#include "ctrl/control_device.h"
#include "device/device.h"
#include "event_loop.h"
#include "manager.h"
#include "queue/queue_worker.h"
#include "skip.h"
#include "uring/ring.h"

using namespace ublkd;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

bool readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0;
}

// Triggers `abort` from another thread after `delay`, like the event loop
// does while the control thread waits.
class LateTrigger {
 public:
  LateTrigger(AbortSignal& abort, std::chrono::milliseconds delay)
      : t_([&abort, delay] {
          std::this_thread::sleep_for(delay);
          abort.trigger();
        }) {}
  ~LateTrigger() { t_.join(); }

 private:
  std::thread t_;
};

struct Pipe {
  Pipe() {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    rd.reset(fds[0]);
    wr.reset(fds[1]);
  }
  UniqueFd rd, wr;
};

// A FIFO takes the control device's place: it refuses every uring command at
// once (EOPNOTSUPP), whatever the kernel.
class FakeControl {
 public:
  FakeControl() {
    char tmpl[] = "/tmp/ublkd-abort-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/ublk-control";
    REQUIRE(::mkfifo(path_.c_str(), 0600) == 0);
  }
  ~FakeControl() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string dir_;
  std::string path_;
};

// Whether /dev/null can stand in for a control device that says yes.
bool dev_null_accepts_commands() {
  auto probe = ControlDevice::open("/dev/null");
  return probe.ok() && probe->stop_dev(0, 1000ms).ok();
}

long ms_since(Clock::time_point t0) {
  return static_cast<long>(
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count());
}

}  // namespace

TEST_CASE("an abort signal turns its fd readable for good, once, from any thread", "[abort]") {
  AbortSignal abort;
  REQUIRE(abort.usable().ok());
  REQUIRE(abort.fd() >= 0);
  CHECK_FALSE(abort.triggered());
  CHECK_FALSE(readable(abort.fd()));

  std::thread([&abort] { abort.trigger(); }).join();
  CHECK(abort.triggered());
  CHECK(readable(abort.fd()));
  abort.trigger();  // idempotent
  CHECK(abort.triggered());
  CHECK(readable(abort.fd()));
}

TEST_CASE("a ring wait ends at once when the abort poll fires", "[abort]") {
  auto ring_r = Ring::create(8, 0);
  REQUIRE(ring_r.ok());
  Ring ring = std::move(ring_r).value();
  Pipe pipe;
  AbortSignal abort;

  // A read of an empty pipe stands in for a command the kernel sits on.
  char byte = 0;
  io_uring_sqe* sqe = ring.get_sqe();
  REQUIRE(sqe != nullptr);
  io_uring_prep_read(sqe, pipe.rd.get(), &byte, 1, 0);
  sqe->user_data = 1;
  sqe = ring.get_sqe();
  REQUIRE(sqe != nullptr);
  io_uring_prep_poll_add(sqe, abort.fd(), POLLIN);
  sqe->user_data = 2;
  REQUIRE(ring.submit_all().ok());

  const auto t0 = Clock::now();
  {
    LateTrigger late(abort, 50ms);
    auto r = ring.wait_for(1, t0 + 10s, 2);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == ECANCELED);
  }
  CHECK(ms_since(t0) < 2000);

  // The operation itself is still pending until it is cancelled.
  sqe = ring.get_sqe();
  REQUIRE(sqe != nullptr);
  io_uring_prep_cancel64(sqe, 1, 0);
  sqe->user_data = 0;
  REQUIRE(ring.submit_all().ok());
  auto back = ring.wait_for(1, Clock::now() + 2s);
  REQUIRE(back.ok());
  CHECK(*back == -ECANCELED);
}

TEST_CASE("a ring wait reports ETIME at the deadline and skips stale completions", "[abort]") {
  auto ring_r = Ring::create(8, 0);
  REQUIRE(ring_r.ok());
  Ring ring = std::move(ring_r).value();
  Pipe pipe;
  char byte = 0;
  io_uring_sqe* sqe = ring.get_sqe();
  io_uring_prep_read(sqe, pipe.rd.get(), &byte, 1, 0);
  sqe->user_data = 1;
  REQUIRE(ring.submit_all().ok());

  const auto t0 = Clock::now();
  auto r = ring.wait_for(1, t0 + 100ms);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == ETIME);
  CHECK(ms_since(t0) >= 100);

  // Completions of other tags (a given-up operation, a cancel) are dropped.
  sqe = ring.get_sqe();
  io_uring_prep_nop(sqe);
  sqe->user_data = 7;
  sqe = ring.get_sqe();
  io_uring_prep_nop(sqe);
  sqe->user_data = 8;
  REQUIRE(ring.submit_all().ok());
  auto n = ring.wait_for(8, Clock::now() + 2s);
  REQUIRE(n.ok());
  CHECK(*n == 0);

  REQUIRE(::write(pipe.wr.get(), "x", 1) == 1);
  auto done = ring.wait_for(1, Clock::now() + 2s);
  REQUIRE(done.ok());
  CHECK(*done == 1);
  CHECK(byte == 'x');
}

// Commands answered at once are enough to see that an armed abort poll does
// not leak into later commands.
TEST_CASE("START_DEV with an abort signal: refused when already aborted, no stale wake-ups",
          "[abort]") {
  FakeControl fake;
  auto ctrl_r = ControlDevice::open(fake.path());
  REQUIRE(ctrl_r.ok());
  ControlDevice ctrl = std::move(ctrl_r).value();
  AbortSignal abort;

  for (int i = 0; i < 3; ++i) {
    auto r = ctrl.start_dev(0, ::getpid(), 1000ms, &abort);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == EOPNOTSUPP);
    CHECK(r.error().message() == "START_DEV");
  }
  abort.trigger();
  // The poll armed by the commands above was taken out: the trigger does not
  // end a later command's wait, which reports the kernel's answer.
  for (int i = 0; i < 3; ++i) {
    auto r = ctrl.stop_dev(0, 1000ms);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == EOPNOTSUPP);
  }
  const auto t0 = Clock::now();
  auto r = ctrl.start_dev(0, ::getpid(), 10'000ms, &abort);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == ECANCELED);
  CHECK(r.error().message() == "START_DEV aborted before it was sent");
  CHECK(ms_since(t0) < 1000);
}

TEST_CASE("the primed-queues wait ends soon after an abort, not at its deadline", "[abort]") {
  auto backend = NullBackend::create(1 << 20);
  REQUIRE(backend.ok());
  QueueConfig qc;
  qc.queue_id = 3;
  qc.depth = 4;
  // Never started: it never reports primed, like a queue stuck in setup.
  QueueWorker worker(qc, **backend);
  AbortSignal abort;

  const auto t0 = Clock::now();
  auto r = worker.wait_primed(t0 + 100ms, &abort);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == ETIMEDOUT);
  CHECK(ms_since(t0) >= 100);

  const auto t1 = Clock::now();
  {
    LateTrigger late(abort, 50ms);
    r = worker.wait_primed(t1 + 10s, &abort);
  }
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == ECANCELED);
  CHECK_THAT(r.error().message(), Catch::Contains("queue 3"));
  CHECK(ms_since(t1) < 2000);

  const auto t2 = Clock::now();
  r = worker.wait_primed(t2 + 10s, &abort);  // already aborted: at once
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == ECANCELED);
  CHECK(ms_since(t2) < 1000);
}

namespace {

struct Recorded {
  std::vector<std::pair<DeviceState, DeviceState>> steps;
  std::string reason;
};

std::unique_ptr<Device> null_device(Recorded& rec, const std::string& control_path) {
  DeviceConfig cfg;
  cfg.name = "abort0";
  cfg.control_path = control_path;
  auto backend = NullBackend::create(1 << 20);
  REQUIRE(backend.ok());
  auto listener = [&rec](DeviceState from, DeviceState to, const std::string& reason) {
    rec.steps.emplace_back(from, to);
    if (to == DeviceState::kFailed) rec.reason = reason;
  };
  return std::make_unique<Device>(cfg, std::unique_ptr<Backend>(std::move(backend).value()),
                                  listener);
}

}  // namespace

TEST_CASE("a device whose start was aborted before it began fails without touching the kernel",
          "[abort][device]") {
  Recorded rec;
  // A control path that does not exist: reaching it would fail with ENOENT.
  auto dev = null_device(rec, "/nonexistent/ublk-control");
  dev->abort_start("ublkd is shutting down");
  dev->abort_start("a second reason is ignored");

  auto r = dev->start();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == ECANCELED);
  CHECK(dev->state() == DeviceState::kFailed);
  CHECK(dev->failure_reason() == "start aborted: ublkd is shutting down: Operation canceled");
  CHECK(rec.reason == dev->failure_reason());
  REQUIRE(rec.steps.size() == 1);
  CHECK(rec.steps[0] == std::make_pair(DeviceState::kNew, DeviceState::kFailed));
  CHECK_FALSE(dev->cleanup_failed());
  CHECK_FALSE(dev->dev_id().has_value());

  // It stays failed: neither a second start nor a stop changes anything.
  CHECK(dev->start().error().code() == EALREADY);
  CHECK(dev->stop().ok());
  CHECK(dev->state() == DeviceState::kFailed);
}

TEST_CASE("an abort after the device ended changes nothing", "[abort][device]") {
  Recorded rec;
  // The fake refuses ADD_DEV: the start fails there, with nothing to clean.
  FakeControl fake;
  auto dev = null_device(rec, fake.path());
  auto r = dev->start();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == EOPNOTSUPP);
  CHECK(dev->state() == DeviceState::kFailed);
  CHECK_FALSE(dev->cleanup_failed());
  const std::string reason = dev->failure_reason();
  CHECK_THAT(reason, Catch::StartsWith("ADD_DEV"));

  dev->abort_start("ublkd is shutting down");
  CHECK(dev->state() == DeviceState::kFailed);
  CHECK(dev->failure_reason() == reason);
  CHECK(rec.steps.size() == 1);
}

// /dev/null answers every uring command with success on kernels that give it
// a uring_cmd handler (for testing io_uring itself). As a control device it
// takes a device through ADD_DEV and SET_PARAMS, after which /dev/ublkcN
// never appears: the start waits there, up to its 3 s, unless aborted.
TEST_CASE("a start aborted half-way is torn down and ends failed with the abort's reason",
          "[abort][device][env][env-uring-cmd-null]") {
  if (!dev_null_accepts_commands()) {
    SKIP_TEST("this kernel's /dev/null refuses uring commands");
  }
  Recorded rec;
  auto dev = null_device(rec, "/dev/null");
  std::optional<Result<void>> result;
  const auto t0 = Clock::now();
  std::thread control([&] { result.emplace(dev->start()); });
  while (dev->state() != DeviceState::kParamsSet && ms_since(t0) < 2000)
    std::this_thread::sleep_for(1ms);
  dev->abort_start("ublkd is shutting down");
  control.join();
  CHECK(ms_since(t0) < 2500);

  REQUIRE(result.has_value());
  REQUIRE_FALSE(result->ok());
  CHECK(result->error().code() == ECANCELED);
  CHECK_THAT(dev->failure_reason(), Catch::StartsWith("start aborted: ublkd is shutting down"));
  CHECK(dev->state() == DeviceState::kFailed);
  // STOP_DEV and DEL_DEV went out (and were answered): nothing left behind.
  CHECK_FALSE(dev->cleanup_failed());
  const std::vector<std::pair<DeviceState, DeviceState>> want = {
      {DeviceState::kNew, DeviceState::kAdded},
      {DeviceState::kAdded, DeviceState::kParamsSet},
      {DeviceState::kParamsSet, DeviceState::kFailed},
  };
  CHECK(rec.steps == want);
}

TEST_CASE("the manager's shutdown cuts short a start under way instead of waiting for it",
          "[abort][manager][env][env-uring-cmd-null]") {
  if (!dev_null_accepts_commands()) {
    SKIP_TEST("this kernel's /dev/null refuses uring commands");
  }
  const auto level = spdlog::get_level();
  spdlog::set_level(spdlog::level::off);
  struct Restore {
    spdlog::level::level_enum l;
    ~Restore() { spdlog::set_level(l); }
  } restore{level};

  auto loop_r = EventLoop::create();
  REQUIRE(loop_r.ok());
  EventLoop& loop = **loop_r;
  FakeControl scratch;  // its directory serves as the (unused) config dir
  ManagerOptions o;
  o.control_path = "/dev/null";
  o.config_dir = std::filesystem::path(scratch.path()).parent_path();
  Manager manager(loop, o);
  REQUIRE(manager.probe().ok());

  DeviceSpec spec;
  spec.name = "abort0";
  spec.backend.type = "null";
  spec.backend.size = 1 << 20;
  std::optional<std::variant<DeviceSnapshot, OpError>> added;
  std::optional<std::vector<std::string>> left_behind;
  manager.add(spec, false, [&](auto r) { added.emplace(std::move(r)); });

  // Shut down once the start waits for /dev/ublkcN (which never comes).
  bool shutting_down = false;
  const auto t0 = Clock::now();
  REQUIRE(loop.every(1ms,
                     [&] {
                       if (shutting_down) return;
                       auto d = manager.info("abort0");
                       if (d && d->state != DeviceState::kParamsSet && ms_since(t0) < 2000) return;
                       shutting_down = true;
                       manager.shutdown([&](std::vector<std::string> names) {
                         left_behind = std::move(names);
                         loop.stop();
                       });
                     })
              .ok());
  REQUIRE(loop.run().ok());
  CHECK(ms_since(t0) < 2500);

  REQUIRE(added.has_value());
  const auto* err = std::get_if<OpError>(&*added);
  REQUIRE(err != nullptr);
  CHECK(err->kind == Failure::kShuttingDown);
  CHECK_THAT(err->message, Catch::Contains("start aborted: ublkd is shutting down"));
  REQUIRE(left_behind.has_value());
  CHECK(left_behind->empty());
}

TEST_CASE("a shutdown with nothing to stop reports nothing left behind", "[abort][manager]") {
  auto loop_r = EventLoop::create();
  REQUIRE(loop_r.ok());
  Manager manager(**loop_r, ManagerOptions{});
  std::optional<std::vector<std::string>> left_behind;
  manager.shutdown([&](std::vector<std::string> names) { left_behind = std::move(names); });
  REQUIRE(left_behind.has_value());
  CHECK(left_behind->empty());
}
