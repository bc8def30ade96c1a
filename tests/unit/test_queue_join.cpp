// The promise: QueueWorker::join joins its thread in a way ThreadSanitizer
// sees. glibc gives the next thread the joined one's cached stack, and with
// it the same pthread_t; a TSan build that took the joined thread for one
// still running aborts the process there ("dup thread with used id"), as
// the TSan runs of the VM cases did at the first `del` of a device. No ublk
// driver needed: the worker has no char device, so its setup fails and its
// thread ends at once. Only a TSan build can fail this.
#include <catch2/catch.hpp>

#include <chrono>
#include <thread>

#include "backend/null_backend.h"
#include "queue/queue_worker.h"

using namespace ublkd;
using namespace std::chrono_literals;

TEST_CASE("the thread after a joined queue thread, which takes its id, is a new thread to TSan",
          "[queue]") {
  auto backend = NullBackend::create(1 << 20);
  REQUIRE(backend.ok());
  for (int i = 0; i < 3; ++i) {
    QueueConfig qc;
    qc.queue_id = static_cast<uint16_t>(i);
    qc.depth = 4;
    qc.buf_bytes = 4096;
    qc.char_fd = -1;
    QueueWorker worker(qc, **backend);
    REQUIRE(worker.start().ok());
    CHECK_FALSE(worker.wait_primed(std::chrono::steady_clock::now() + 10s).ok());
    REQUIRE(worker.join(std::chrono::steady_clock::now() + 10s));
    CHECK_FALSE(worker.lingering());
    bool ran = false;
    std::thread next([&ran] { ran = true; });
    next.join();
    CHECK(ran);
  }
}
