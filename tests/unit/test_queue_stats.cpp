// The promise: a queue's counters are what its thread counted, per
// operation, with the errors apart and the latency in its log2 bucket, and a
// snapshot read while the thread counts never shows more answers than
// requests.
#include "queue/queue_stats.h"
#include "uapi/ublk.h"

#include <catch2/catch.hpp>

#include <cerrno>

#include <atomic>
#include <thread>

using namespace ublkd;

TEST_CASE("stats: latency buckets are log2 of microseconds, the last open", "[stats]") {
  CHECK(latency_bucket(0) == 0);
  CHECK(latency_bucket(1) == 0);
  CHECK(latency_bucket(2) == 1);
  CHECK(latency_bucket(3) == 1);
  CHECK(latency_bucket(4) == 2);
  CHECK(latency_bucket(1023) == 9);
  CHECK(latency_bucket(1024) == 10);
  CHECK(latency_bucket(UINT64_MAX) == kLatencyBuckets - 1);
  CHECK(latency_bucket_limit_us(0) == 2);
  CHECK(latency_bucket_limit_us(9) == 1024);
  CHECK(latency_bucket_limit_us(kLatencyBuckets - 2) == uint64_t{1} << (kLatencyBuckets - 1));
  CHECK(latency_bucket_limit_us(kLatencyBuckets - 1) == 0);
}

TEST_CASE("stats: each answer counts for its operation, errors apart", "[stats]") {
  QueueStats q;
  for (int i = 0; i < 5; ++i) q.received();
  q.answered(uapi::kOpRead, 4096, 4096, 10);
  q.answered(uapi::kOpWrite, 8192, 8192, 100);
  q.answered(uapi::kOpWrite, -EIO, 4096, 3);
  q.answered(uapi::kOpFlush, 0, 0, 0);
  const StatsSnapshot s = q.snapshot();
  CHECK(s.op[0].ops == 1);
  CHECK(s.op[0].bytes == 4096);
  CHECK(s.op[1].ops == 2);
  CHECK(s.op[1].bytes == 8192);
  CHECK(s.op[1].errors == 1);
  CHECK(s.op[2].ops == 1);
  CHECK(s.op[3].ops == 0);
  CHECK(s.in_flight() == 1);
  CHECK(s.latency[latency_bucket(10)] == 1);
  CHECK(s.latency[latency_bucket(100)] == 1);
  CHECK(s.latency[0] == 1);
  CHECK(s.latency[1] == 1);
  CHECK(s.latency_sum_us == 113);

  StatsSnapshot sum = s;
  sum += s;
  CHECK(sum.op[1].ops == 4);
  CHECK(sum.in_flight() == 2);
  CHECK(sum.latency_sum_us == 226);
}

TEST_CASE("stats: a snapshot taken while the queue counts is consistent", "[stats]") {
  QueueStats q;
  std::atomic<bool> done{false};
  constexpr int kRequests = 200'000;
  std::thread queue([&] {
    for (int i = 0; i < kRequests; ++i) {
      q.received();
      q.answered(uapi::kOpRead, 512, 512, 1);
    }
    done = true;
  });
  uint64_t last = 0;
  while (!done) {
    const StatsSnapshot s = q.snapshot();
    REQUIRE(s.received >= s.answered);
    REQUIRE(s.answered >= last);
    last = s.answered;
  }
  queue.join();
  const StatsSnapshot s = q.snapshot();
  CHECK(s.received == kRequests);
  CHECK(s.op[0].ops == kRequests);
  CHECK(s.op[0].bytes == uint64_t{512} * kRequests);
  CHECK(s.in_flight() == 0);
}
