#include "queue/idle_poll.h"

#include <algorithm>

namespace ublkd {

std::chrono::nanoseconds IdlePoll::budget() const {
  const int64_t max = max_spin_.count();
  if (max == 0 || avg_gap_ns_ > max) return std::chrono::nanoseconds(0);
  // Twice the average: most gaps end within it; and at least a little, so
  // that a run of zero gaps does not turn spinning off.
  return std::chrono::nanoseconds(std::clamp<int64_t>(2 * avg_gap_ns_, max / 16, max));
}

void IdlePoll::record(std::chrono::nanoseconds gap) {
  // Long sleeps are capped so that one of them does not hold spinning off
  // for long once work comes quickly again.
  const int64_t g = std::min<int64_t>(gap.count(), 4 * max_spin_.count());
  avg_gap_ns_ += (g - avg_gap_ns_) / 4;
}

}  // namespace ublkd
