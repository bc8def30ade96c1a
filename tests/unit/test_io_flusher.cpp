// The promise: every queue thread marks itself an I/O flusher
// (PR_SET_IO_FLUSHER) before it serves, a thread that may not (no
// CAP_SYS_RESOURCE) serves anyway, and the failure is reported up rather than
// logged. No ublk driver here: the worker is given no char device, so its
// setup fails at the first mapping, after the prctl.
#include <catch2/catch.hpp>

#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <thread>

#include "backend/null_backend.h"
#include "queue/queue_worker.h"
#include "skip.h"

using namespace ublkd;
using namespace std::chrono_literals;

namespace {

// Capabilities are per thread, and a new thread starts with its creator's.
bool thread_has_sys_resource() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (::syscall(SYS_capget, &hdr, data) != 0) return false;
  return (data[CAP_SYS_RESOURCE / 32].effective & (1u << (CAP_SYS_RESOURCE % 32))) != 0;
}

bool drop_sys_resource_in_this_thread() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (::syscall(SYS_capget, &hdr, data) != 0) return false;
  data[CAP_SYS_RESOURCE / 32].effective &= ~(1u << (CAP_SYS_RESOURCE % 32));
  return ::syscall(SYS_capset, &hdr, data) == 0;
}

struct Outcome {
  std::optional<Error> primed_error;
  std::optional<Error> flusher_error;
};

// Runs a queue worker to the end of its (failing) setup.
Outcome run_worker() {
  auto backend = NullBackend::create(1 << 20);
  REQUIRE(backend.ok());
  QueueConfig qc;
  qc.queue_id = 2;
  qc.depth = 4;
  qc.buf_bytes = 4096;
  qc.char_fd = -1;
  QueueWorker worker(qc, **backend);
  Outcome out;
  CHECK(worker.io_flusher_error() == std::nullopt);  // not tried yet
  REQUIRE(worker.start().ok());
  auto r = worker.wait_primed(std::chrono::steady_clock::now() + 10s);
  if (!r) out.primed_error = r.error();
  out.flusher_error = worker.io_flusher_error();
  return out;
}

}  // namespace

TEST_CASE("a queue thread without CAP_SYS_RESOURCE reports the refused PR_SET_IO_FLUSHER",
          "[queue][io_flusher]") {
  Outcome out;
  bool dropped = false;
  std::thread t([&] {
    dropped = drop_sys_resource_in_this_thread();
    if (dropped) out = run_worker();
  });
  t.join();
  REQUIRE(dropped);
  REQUIRE(out.flusher_error.has_value());
  CHECK(out.flusher_error->code() == EPERM);
  CHECK(out.flusher_error->to_string() == "prctl(PR_SET_IO_FLUSHER): Operation not permitted");
  // The setup went on past the refusal and failed where it had to, later.
  REQUIRE(out.primed_error.has_value());
  CHECK_THAT(out.primed_error->message(), Catch::Contains("mmap io descriptors"));
}

TEST_CASE("a queue thread with CAP_SYS_RESOURCE becomes an I/O flusher",
          "[queue][io_flusher][env][env-cap-sys-resource]") {
  if (!thread_has_sys_resource()) {
    SKIP_TEST("this test runs without CAP_SYS_RESOURCE");
  }
  const Outcome out = run_worker();
  CHECK(out.flusher_error == std::nullopt);
  REQUIRE(out.primed_error.has_value());
  CHECK_THAT(out.primed_error->message(), Catch::Contains("mmap io descriptors"));
}
