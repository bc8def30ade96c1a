// A thin RAII owner of a liburing ring plus the few helpers the control and
// queue paths share. Every function returns an Error instead of logging.
#pragma once

#include <liburing.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "base/error.h"

namespace ublkd {

class Ring {
 public:
  // entries: submission queue size; flags: IORING_SETUP_*.
  static Result<Ring> create(unsigned entries, unsigned flags);

  // Like create(), with `flags` always set and each flag of `optional` set
  // when the kernel accepts it: a flag it does not know is refused with
  // EINVAL, and then the ring is set up again without it (flags this code
  // does not know first, then the most recently added). flags() tells what
  // was granted.
  static Result<Ring> create_probed(unsigned entries, unsigned flags, unsigned optional);

  // The IORING_SETUP_* flags the ring was set up with.
  unsigned flags() const { return ring_->flags; }

  Ring(Ring&&) noexcept = default;
  Ring& operator=(Ring&&) noexcept = default;
  ~Ring();

  io_uring* get() { return ring_.get(); }
  int fd() const { return ring_->ring_fd; }

  // A zeroed SQE. When the submission queue is full it submits what is queued
  // to make room; nullptr only if even that fails.
  io_uring_sqe* get_sqe();

  // Submits everything queued; retries on EINTR and short submits.
  Result<void> submit_all();

  // Waits at most `timeout` for one completion to be available.
  // Returns ETIME when none arrived in time.
  Result<io_uring_cqe*> wait_cqe(std::chrono::milliseconds timeout);

  // Waits for the completion tagged `user_data` and returns its res (a
  // negative errno there is the operation's own outcome, not an error of the
  // wait). Completions with other tags are consumed and dropped: they belong
  // to operations given up on earlier, or to cancels. Errors: ETIME when the
  // deadline passes first; ECANCELED when the completion tagged `wake`
  // (unless 0) arrives first, e.g. a poll on an abort signal's eventfd.
  Result<int> wait_for(uint64_t user_data, std::chrono::steady_clock::time_point deadline,
                       uint64_t wake = 0);

  Result<void> register_files(const int* fds, unsigned count);

 private:
  explicit Ring(std::unique_ptr<io_uring> ring) : ring_(std::move(ring)) {}
  // liburing keeps pointers into the ring's mappings inside struct io_uring;
  // holding it by pointer keeps Ring cheaply movable.
  std::unique_ptr<io_uring> ring_;
};

// IORING_SETUP_* flags by name ("single-issuer,defer-taskrun"), for logs;
// "none" for 0.
std::string setup_flags_string(unsigned flags);

// Fills an IORING_OP_URING_CMD SQE. The payload lands in the SQE's command
// area: 16 bytes in a normal ring, 80 in an SQE128 ring.
template <typename Payload>
void prep_uring_cmd(io_uring_sqe* sqe, int fd, uint32_t cmd_op, const Payload& payload) {
  static_assert(sizeof(Payload) <= 80);
  io_uring_prep_rw(IORING_OP_URING_CMD, sqe, fd, nullptr, 0, 0);
  sqe->cmd_op = cmd_op;
  std::memcpy(sqe->cmd, &payload, sizeof(Payload));
}

}  // namespace ublkd
