#include "uring/ring.h"

#include <cstdio>
#include <utility>

namespace ublkd {

Result<Ring> Ring::create(unsigned entries, unsigned flags) {
  auto ring = std::make_unique<io_uring>();
  io_uring_params params{};
  params.flags = flags;
  int ret = io_uring_queue_init_params(entries, ring.get(), &params);
  if (ret < 0) return Error(ret, "io_uring setup (" + std::to_string(entries) + " entries)");
  return Ring(std::move(ring));
}

Result<Ring> Ring::create_probed(unsigned entries, unsigned flags, unsigned optional) {
  // Newest first, so that a kernel lacking one keeps the older ones. A flag
  // that needs another (DEFER_TASKRUN needs SINGLE_ISSUER) is dropped with
  // it, because it comes first in this list.
  static constexpr unsigned kNewestFirst[] = {IORING_SETUP_DEFER_TASKRUN,
                                              IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_TASKRUN_FLAG,
                                              IORING_SETUP_COOP_TASKRUN};
  unsigned listed = 0;
  for (unsigned f : kNewestFirst) listed |= f;
  unsigned want = optional;
  for (;;) {
    auto ring = create(entries, flags | want);
    if (ring || ring.error().code() != EINVAL || want == 0) return ring;
    // Flags outside the list go first, all at once: no order is known.
    if ((want & ~listed) != 0) {
      want &= listed;
      continue;
    }
    for (unsigned f : kNewestFirst) {
      if (want & f) {
        want &= ~f;
        break;
      }
    }
  }
}

Ring::~Ring() {
  if (ring_) io_uring_queue_exit(ring_.get());
}

io_uring_sqe* Ring::get_sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
  if (sqe == nullptr) {
    if (io_uring_submit(ring_.get()) < 0) return nullptr;
    sqe = io_uring_get_sqe(ring_.get());
  }
  return sqe;
}

Result<void> Ring::submit_all() {
  while (io_uring_sq_ready(ring_.get()) > 0) {
    int ret = io_uring_submit(ring_.get());
    if (ret == -EINTR) continue;
    if (ret < 0) return Error(ret, "io_uring submit");
    if (ret == 0) return Error(EAGAIN, "io_uring submit made no progress");
  }
  return {};
}

Result<io_uring_cqe*> Ring::wait_cqe(std::chrono::milliseconds timeout) {
  using namespace std::chrono;
  const auto deadline = steady_clock::now() + timeout;
  for (;;) {
    auto left = duration_cast<nanoseconds>(deadline - steady_clock::now());
    if (left.count() < 0) left = nanoseconds(0);
    __kernel_timespec ts{};
    ts.tv_sec = left.count() / 1'000'000'000;
    ts.tv_nsec = left.count() % 1'000'000'000;
    io_uring_cqe* cqe = nullptr;
    int ret = io_uring_wait_cqe_timeout(ring_.get(), &cqe, &ts);
    if (ret == 0) return cqe;
    if (ret == -EINTR && steady_clock::now() < deadline) continue;
    return Error(ret, "waiting for io_uring completion");
  }
}

Result<int> Ring::wait_for(uint64_t user_data, std::chrono::steady_clock::time_point deadline,
                           uint64_t wake) {
  using namespace std::chrono;
  for (;;) {
    // Rounded up, so the wait never ends (ETIME) before the deadline.
    auto left = ceil<milliseconds>(deadline - steady_clock::now());
    if (left.count() < 0) left = milliseconds(0);
    auto cqe = wait_cqe(left);
    if (!cqe) return cqe.error();
    const uint64_t ud = (*cqe)->user_data;
    const int res = (*cqe)->res;
    io_uring_cqe_seen(ring_.get(), *cqe);
    if (ud == user_data) return res;
    if (wake != 0 && ud == wake) return Error(ECANCELED, "wait woken");
  }
}

Result<void> Ring::register_files(const int* fds, unsigned count) {
  int ret = io_uring_register_files(ring_.get(), fds, count);
  if (ret < 0) return Error(ret, "io_uring register files");
  return {};
}

std::string setup_flags_string(unsigned flags) {
  static constexpr std::pair<unsigned, const char*> kNames[] = {
      {IORING_SETUP_IOPOLL, "iopoll"},
      {IORING_SETUP_SQPOLL, "sqpoll"},
      {IORING_SETUP_SQ_AFF, "sq-aff"},
      {IORING_SETUP_CQSIZE, "cqsize"},
      {IORING_SETUP_CLAMP, "clamp"},
      {IORING_SETUP_ATTACH_WQ, "attach-wq"},
      {IORING_SETUP_R_DISABLED, "r-disabled"},
      {IORING_SETUP_SUBMIT_ALL, "submit-all"},
      {IORING_SETUP_COOP_TASKRUN, "coop-taskrun"},
      {IORING_SETUP_TASKRUN_FLAG, "taskrun-flag"},
      {IORING_SETUP_SQE128, "sqe128"},
      {IORING_SETUP_CQE32, "cqe32"},
      {IORING_SETUP_SINGLE_ISSUER, "single-issuer"},
      {IORING_SETUP_DEFER_TASKRUN, "defer-taskrun"},
  };
  std::string out;
  for (const auto& [bit, name] : kNames) {
    if ((flags & bit) == 0) continue;
    if (!out.empty()) out += ',';
    out += name;
    flags &= ~bit;
  }
  if (flags != 0) {
    if (!out.empty()) out += ',';
    out += "0x" + [](unsigned v) {
      char b[16];
      snprintf(b, sizeof b, "%x", v);
      return std::string(b);
    }(flags);
  }
  return out.empty() ? "none" : out;
}

}  // namespace ublkd
