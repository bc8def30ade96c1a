#include "queue/queue_stats.h"

namespace ublkd {

StatsSnapshot& StatsSnapshot::operator+=(const StatsSnapshot& o) {
  for (size_t i = 0; i < kStatOps; ++i) {
    op[i].ops += o.op[i].ops;
    op[i].bytes += o.op[i].bytes;
    op[i].errors += o.op[i].errors;
  }
  received += o.received;
  answered += o.answered;
  for (size_t i = 0; i < kLatencyBuckets; ++i) latency[i] += o.latency[i];
  latency_sum_us += o.latency_sum_us;
  return *this;
}

StatsSnapshot QueueStats::snapshot() const {
  constexpr auto kRelaxed = std::memory_order_relaxed;
  StatsSnapshot s;
  // Answered before received: a request counted answered was received
  // first, so in_flight() never sees more answers than requests.
  s.answered = answered_.load(std::memory_order_acquire);
  for (size_t i = 0; i < kStatOps; ++i) {
    s.op[i].ops = op_[i].ops.load(kRelaxed);
    s.op[i].bytes = op_[i].bytes.load(kRelaxed);
    s.op[i].errors = op_[i].errors.load(kRelaxed);
  }
  for (size_t i = 0; i < kLatencyBuckets; ++i) s.latency[i] = latency_[i].load(kRelaxed);
  s.latency_sum_us = latency_sum_us_.load(kRelaxed);
  s.received = received_.load(kRelaxed);
  return s;
}

}  // namespace ublkd
