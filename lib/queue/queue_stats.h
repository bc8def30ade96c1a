// What one queue has served: requests and bytes per operation, errors,
// requests in flight and a latency histogram. The queue thread is the only
// writer and counts without read-modify-write (a relaxed load and store of
// its own cache lines); anybody may read a snapshot at any time, which is
// then exact per counter and at most a few requests apart between them.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace ublkd {

// The operations counted, in the order of IoOp's values (UBLK_IO_OP_*).
inline constexpr size_t kStatOps = 5;
inline constexpr const char* kStatOpNames[kStatOps] = {"read", "write", "flush", "discard",
                                                       "write_zeroes"};

// Latency from the queue thread's view: from the pass of its loop that
// fetched the request to the moment it queued the answer. Bucket 0 holds
// what took less than 2 µs, bucket i (1 <= i < last) [2^i, 2^(i+1)) µs, the
// last everything from 2^kLatencyBuckets-1 µs (about 16.8 s) on.
inline constexpr size_t kLatencyBuckets = 25;

// Upper bound of bucket i in µs (exclusive); 0 for the last, which has none.
constexpr uint64_t latency_bucket_limit_us(size_t i) {
  return i + 1 < kLatencyBuckets ? uint64_t{2} << i : 0;
}

constexpr size_t latency_bucket(uint64_t us) {
  size_t b = 0;
  while (b + 1 < kLatencyBuckets && us >= latency_bucket_limit_us(b)) ++b;
  return b;
}

// A copy of the counters, plain numbers; sums of several are sums.
struct StatsSnapshot {
  struct Op {
    uint64_t ops = 0;  // answered, errors included
    uint64_t bytes = 0;  // of the successful ones
    uint64_t errors = 0;
  };
  std::array<Op, kStatOps> op{};
  uint64_t received = 0;  // requests the kernel handed to the queue
  uint64_t answered = 0;
  std::array<uint64_t, kLatencyBuckets> latency{};
  uint64_t latency_sum_us = 0;

  uint64_t in_flight() const { return received >= answered ? received - answered : 0; }
  StatsSnapshot& operator+=(const StatsSnapshot& o);
};

class QueueStats {
 public:
  // The queue thread: the kernel handed over a request.
  void received() { bump(received_, 1); }
  // The queue thread: the request of `op` (an IoOp value) was answered
  // with `result` (>= 0 success), `bytes` long, `latency_us` after it came.
  void answered(uint8_t op, int result, uint64_t bytes, uint64_t latency_us) {
    // Release: a snapshot that sees this answer sees its request received.
    answered_.store(answered_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    bump(latency_[latency_bucket(latency_us)], 1);
    bump(latency_sum_us_, latency_us);
    if (op >= kStatOps) return;
    Op& o = op_[op];
    bump(o.ops, 1);
    if (result < 0)
      bump(o.errors, 1);
    else
      bump(o.bytes, bytes);
  }

  StatsSnapshot snapshot() const;

 private:
  using Counter = std::atomic<uint64_t>;
  static void bump(Counter& c, uint64_t n) {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  struct Op {
    Counter ops{0};
    Counter bytes{0};
    Counter errors{0};
  };
  alignas(64) Counter received_{0};
  Counter answered_{0};
  Counter latency_sum_us_{0};
  std::array<Op, kStatOps> op_{};
  std::array<Counter, kLatencyBuckets> latency_{};
};

}  // namespace ublkd
