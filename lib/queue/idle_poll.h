// When a queue thread has nothing to do, it either sleeps in io_uring_enter
// or spins for a moment watching its ring. A sleeping thread makes the
// kernel wake it for the next request: an inter-processor interrupt and a
// context switch, paid on the submitting CPU, per request when requests
// trickle in. A spinning thread costs only its own CPU, and only pays when
// work comes soon. IdlePoll decides how long to spin from how long the
// recent idle gaps were: it spins while the gaps are short, and stops
// spinning (sleeps at once) while they are long, until they get short again.
#pragma once

#include <chrono>
#include <cstdint>

namespace ublkd {

class IdlePoll {
 public:
  using Clock = std::chrono::steady_clock;

  // `max_spin`: the longest spin; gaps longer than that are slept through.
  // 0 turns spinning off.
  explicit IdlePoll(std::chrono::nanoseconds max_spin) : max_spin_(max_spin) {}

  // How long to spin now: twice the typical recent gap, at most max_spin;
  // zero while gaps are longer than max_spin.
  std::chrono::nanoseconds budget() const;

  // The idle gap just ended took `gap` (spun through, or slept through).
  void record(std::chrono::nanoseconds gap);

  // Spins up to budget(), calling `ready()` between pauses; true as soon as
  // it returns true. Records the gap when work came.
  template <typename Ready>
  bool spin(Ready&& ready) {
    const auto limit = budget();
    if (limit.count() == 0) return false;
    const auto start = Clock::now();
    for (unsigned i = 0;; ++i) {
      if (ready()) {
        record(Clock::now() - start);
        return true;
      }
      // The clock is read every few rounds only: in a VM it is not free.
      if ((i & 15) == 15 && Clock::now() - start >= limit) return false;
      pause();
    }
  }

 private:
  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  std::chrono::nanoseconds max_spin_;
  // Exponentially weighted average of the recent gaps (weight 1/4 for the
  // newest), in nanoseconds.
  int64_t avg_gap_ns_ = 0;
};

}  // namespace ublkd
