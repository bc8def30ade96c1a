// A one-shot "give up now" for waits that may last long (a device's start:
// the queues' priming, START_DEV). Any thread may trigger it, any number of
// times; once triggered it stays so. A wait either tests triggered() between
// short slices, or watches fd(): an eventfd that turns readable at the first
// trigger and stays readable (nobody reads it), so it can sit in a poll set
// or an io_uring next to the work it interrupts and wake that wait at once.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>

#include "base/error.h"
#include "base/unique_fd.h"

namespace ublkd {

class AbortSignal {
 public:
  AbortSignal() : fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)), fd_errno_(fd_ ? 0 : errno) {}
  AbortSignal(const AbortSignal&) = delete;
  AbortSignal& operator=(const AbortSignal&) = delete;

  // The eventfd could not be created (fd() is -1): a wait that needs fd()
  // must refuse to begin rather than become unabortable.
  Result<void> usable() const {
    if (fd_) return {};
    return Error(fd_errno_, "eventfd for the abort signal");
  }

  // Thread-safe and idempotent; never blocks.
  void trigger() {
    if (triggered_.exchange(true, std::memory_order_acq_rel)) return;
    if (!fd_) return;
    const uint64_t one = 1;
    // Written once, so the counter cannot overflow; the write cannot fail.
    (void)!::write(fd_.get(), &one, sizeof(one));
  }

  bool triggered() const { return triggered_.load(std::memory_order_acquire); }
  int fd() const { return fd_.get(); }

 private:
  UniqueFd fd_;
  int fd_errno_;
  std::atomic<bool> triggered_{false};
};

}  // namespace ublkd
