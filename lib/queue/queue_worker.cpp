#include "queue/queue_worker.h"

#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "base/io_all.h"
#include "base/mapping.h"
#include "base/sanitizers.h"
#include "queue/batch_commands.h"
#include "queue/idle_poll.h"
#include "queue/user_data.h"
#include "uapi/ublk.h"
#include "uring/ring.h"

namespace ublkd {

namespace {

// What the control plane asks of the loop (QueueWorker::commands_).
constexpr unsigned kCmdStop = 1;
constexpr unsigned kCmdFailUnanswered = 2;

// pthread_join with a deadline on steady_clock (CLOCK_MONOTONIC).
int join_until(pthread_t thread, std::chrono::steady_clock::time_point deadline) {
  using namespace std::chrono;
  const auto now = steady_clock::now();
  if constexpr (kThreadSanitizer) {
    // TSan (GCC 12's) does not intercept pthread_clockjoin_np: it would
    // take the thread for one never joined, and abort the process ("dup
    // thread with used id") when a new thread gets the joined one's id,
    // as the next one usually does. It intercepts pthread_timedjoin_np,
    // whose deadline is on CLOCK_REALTIME: a clock step during the join
    // moves it, which a test build can live with.
    timespec rt{};
    ::clock_gettime(CLOCK_REALTIME, &rt);
    const int64_t ns = rt.tv_nsec + duration_cast<nanoseconds>(
                                        std::max(deadline - now, steady_clock::duration::zero()))
                                        .count();
    rt.tv_sec += static_cast<time_t>(ns / 1'000'000'000);
    rt.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    return ::pthread_timedjoin_np(thread, nullptr, &rt);
  }
  const auto ns = duration_cast<nanoseconds>(std::max(deadline, now).time_since_epoch()).count();
  const timespec until{static_cast<time_t>(ns / 1'000'000'000),
                       static_cast<long>(ns % 1'000'000'000)};
  return ::pthread_clockjoin_np(thread, nullptr, CLOCK_MONOTONIC, &until);
}

// Per tag, what the loop knows beyond the kernel's descriptor.
constexpr uint8_t kTagInBackend = 1;  // handed to the backend, not answered yet
constexpr uint8_t kTagStale = 2;      // failed while the backend still had I/O for it

}  // namespace

QueueWorker::QueueWorker(QueueConfig config, Backend& backend, ExitHook on_exit)
    : config_(config), backend_(backend), on_exit_(std::move(on_exit)) {
  primed_future_ = primed_.get_future();
  done_future_ = done_.get_future();
}

QueueWorker::~QueueWorker() {
  if (!thread_started_ || thread_released_) return;
  request_stop();
  // The loop ends at the stop; after it the thread touches nothing of ours.
  done_future_.wait();
  (void)join(std::chrono::steady_clock::now() + std::chrono::milliseconds(100));
}

void* QueueWorker::thread_main(void* self) {
  static_cast<QueueWorker*>(self)->run();
  return nullptr;
}

Result<void> QueueWorker::start() {
  wake_fd_.reset(::eventfd(0, EFD_CLOEXEC));
  if (!wake_fd_) return errno_error("eventfd for queue " + std::to_string(config_.queue_id));
  if (const int err = ::pthread_create(&thread_, nullptr, &QueueWorker::thread_main, this))
    return Error(err, "start thread for queue " + std::to_string(config_.queue_id));
  thread_started_ = true;
  return {};
}

Result<void> QueueWorker::wait_primed(std::chrono::steady_clock::time_point deadline,
                                      const AbortSignal* abort) {
  // A future cannot be waited on together with an fd, so an abortable wait
  // looks at the signal between short slices. Priming takes milliseconds;
  // this only matters for a queue that hangs in its setup.
  constexpr std::chrono::milliseconds kAbortSlice{20};
  for (;;) {
    if (abort != nullptr && abort->triggered())
      return Error(ECANCELED,
                   "queue " + std::to_string(config_.queue_id) + " not primed yet: wait aborted");
    const auto now = std::chrono::steady_clock::now();
    const auto until = abort != nullptr ? std::min(deadline, now + kAbortSlice) : deadline;
    if (primed_future_.wait_until(until) == std::future_status::ready) break;
    if (until >= deadline) {
      return Error(ETIMEDOUT, "queue " + std::to_string(config_.queue_id) +
                                  " did not submit its fetches in time");
    }
  }
  return primed_future_.get();
}

namespace {

void wake(int fd) {
  if (fd < 0) return;
  const uint64_t one = 1;
  // An eventfd write only fails if the counter would overflow, which a
  // handful of commands cannot do.
  (void)!::write(fd, &one, sizeof(one));
}

}  // namespace

void QueueWorker::request_stop() {
  commands_.fetch_or(kCmdStop, std::memory_order_release);
  wake(wake_fd_.get());
}

void QueueWorker::fail_unanswered_after(std::chrono::milliseconds grace) {
  fail_after_ns_.store(std::chrono::duration_cast<std::chrono::nanoseconds>(grace).count(),
                       std::memory_order_relaxed);
  commands_.fetch_or(kCmdFailUnanswered, std::memory_order_release);
  wake(wake_fd_.get());
}

bool QueueWorker::join(std::chrono::steady_clock::time_point deadline) {
  if (!thread_started_ || thread_released_) return true;
  if (done_future_.wait_until(deadline) != std::future_status::ready) return false;
  if (join_until(thread_, deadline) != 0) {
    // Its loop is over; the kernel holds it in its exit until the ring's
    // I/O that cannot be cancelled ends.
    ::pthread_detach(thread_);
    lingering_ = true;
  }
  thread_released_ = true;
  return true;
}

std::optional<Error> QueueWorker::exit_error() const {
  if (!exited()) return std::nullopt;
  return exit_error_;
}

std::optional<Error> QueueWorker::io_flusher_error() const {
  const int err = io_flusher_errno_.load(std::memory_order_acquire);
  if (err <= 0) return std::nullopt;
  return Error(err, "prctl(PR_SET_IO_FLUSHER)");
}

void QueueWorker::run() {
  char name[16];
  snprintf(name, sizeof(name), "ublk%u-q%u", config_.dev_id, config_.queue_id);
  pthread_setname_np(pthread_self(), name);
  // Under memory pressure, writeback to a file system on our own device
  // waits for this thread; if the thread's own allocations went into reclaim
  // and waited for that writeback, neither would move. An I/O flusher's
  // allocations never start I/O in reclaim (PF_MEMALLOC_NOIO), and it is not
  // throttled for other devices' dirty pages.
  const int flusher = ::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) == 0 ? 0 : errno;
  io_flusher_errno_.store(flusher, std::memory_order_release);

  Result<void> r = serve();
  if (!r) exit_error_ = r.error();
  exited_.store(true, std::memory_order_release);
  if (on_exit_) on_exit_(config_.queue_id);
  done_.set_value();
}

namespace {

class QueueLoop;

class WorkerContext final : public QueueContext {
 public:
  WorkerContext(QueueLoop& loop, Ring& ring, uint16_t queue_id, uint16_t depth, int file_index)
      : loop_(loop), ring_(ring), queue_id_(queue_id), depth_(depth), file_index_(file_index) {}
  uint16_t queue_id() const override { return queue_id_; }
  uint16_t depth() const override { return depth_; }
  io_uring_sqe* get_sqe() override { return ring_.get_sqe(); }
  int backend_file_index() const override { return file_index_; }
  void finish(uint16_t tag, int result) override;
  bool waiting(uint16_t tag) const override;
  void set_deadline(uint16_t tag, std::chrono::steady_clock::time_point deadline) override;

 private:
  QueueLoop& loop_;
  Ring& ring_;
  uint16_t queue_id_;
  uint16_t depth_;
  int file_index_;
};

using Clock = std::chrono::steady_clock;
// A tag's deadline when it has none.
constexpr int64_t kNoDeadline = INT64_MAX;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

// How often the worker looks for requests past their deadline while some
// wait: a tenth of the request timeout, within these bounds.
constexpr int64_t kMinTickNs = 10'000'000;
constexpr int64_t kMaxTickNs = 250'000'000;

// Per tag at most one ublk command and one backend SQE are queued at once,
// plus the wake eventfd's read, a timer and the backend's queue-level SQEs.
// The kernel runs a completion's task work when this thread next waits
// (DEFER_TASKRUN), instead of interrupting it (an IPI and a trip through
// the signal path under COOP_TASKRUN alone, a forced one without either):
// one pass of the loop then reaps everything that became ready. The ring
// is only ever used from this thread (SINGLE_ISSUER).
// TASKRUN_FLAG: the kernel raises IORING_SQ_TASKRUN when task work waits,
// which is what lets an idle thread watch for work without entering the
// kernel (IdlePoll).
Result<Ring> make_ring(uint16_t depth) {
  auto ring = Ring::create_probed(2u * depth + 2u + QueueContext::kMaxBackendEvents, 0,
                                  IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
                                      IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
  if (!ring) return ring;
  // Each io_uring_enter then skips looking the ring's fd up. Optional: a
  // kernel without it (before 5.18) serves the same, a little slower.
  (void)io_uring_register_ring_fd(ring->get());
  return ring;
}

// One queue thread's ring, mappings and loop, set up step by step by
// QueueWorker::serve(): attach(), map(), prime(), then run().
class QueueLoop {
 public:
  // `commands`, `fail_after_ns` and `failed_unanswered` are the worker's,
  // shared with the control plane (QueueWorker::fail_unanswered_after).
  QueueLoop(const QueueConfig& c, Backend& backend, Ring ring, int wake_fd,
            std::atomic<unsigned>& commands, const std::atomic<int64_t>& fail_after_ns,
            std::atomic<uint32_t>& failed_unanswered, QueueStats& stats)
      : c_(c),
        backend_(backend),
        ring_(std::move(ring)),
        r_(ring_.get()),
        idle_((ring_.flags() & IORING_SETUP_TASKRUN_FLAG) ? c.idle_spin
                                                          : std::chrono::nanoseconds(0)),
        ctx_(*this, ring_, c.queue_id, c.depth, backend.attach_fd() >= 0 ? 1 : -1),
        wake_fd_(wake_fd),
        commands_(commands),
        fail_after_ns_(fail_after_ns),
        failed_unanswered_(failed_unanswered),
        stats_(stats),
        tag_state_(c.depth, 0),
        received_ns_(c.depth, 0),
        deadline_(c.depth, kNoDeadline),
        timeout_ns_(
            backend.request_timeout()
                ? std::chrono::duration_cast<std::chrono::nanoseconds>(*backend.request_timeout())
                      .count()
                : 0),
        tick_ns_(timeout_ns_ > 0 ? std::clamp(timeout_ns_ / 10, kMinTickNs, kMaxTickNs)
                                 : kMaxTickNs),
        fetch_op_(c.ioctl_encoding ? uapi::io_op_ioctl(uapi::kIoFetchReq)
                                   : uint32_t{uapi::kIoFetchReq}),
        commit_op_(c.ioctl_encoding ? uapi::io_op_ioctl(uapi::kIoCommitAndFetchReq)
                                    : uint32_t{uapi::kIoCommitAndFetchReq}) {
    if (c.batch_io)
      batch_.emplace(c.queue_id, c.depth, !c.user_copy && !c.auto_buf_reg, c.auto_buf_reg);
  }
  ~QueueLoop() {
    if (attached_) backend_.detach(ctx_);
  }
  QueueLoop(const QueueLoop&) = delete;
  QueueLoop& operator=(const QueueLoop&) = delete;

  // The char device as fixed file 0 (and the backend's fd as 1), and the
  // backend's per-queue state.
  Result<void> attach() {
    const int backend_fd = backend_.attach_fd();
    const int files[2] = {c_.char_fd, backend_fd};
    if (auto r = ring_.register_files(files, backend_fd >= 0 ? 2 : 1); !r) return r;
    if (auto r = backend_.attach(ctx_); !r) return r.error().wrap("backend");
    attached_ = true;
    return {};
  }

  // The io descriptors, and the tags' buffers unless requests bring their
  // own pages (auto_buf_reg) or need none (user_copy, unless bridge_copy).
  Result<void> map() {
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const size_t desc_len = round_up(c_.depth * sizeof(uapi::IoDesc), page);
    void* desc_addr = ::mmap(nullptr, desc_len, PROT_READ, MAP_SHARED | MAP_POPULATE, c_.char_fd,
                             static_cast<off_t>(uapi::io_desc_mmap_offset(c_.queue_id, page)));
    if (desc_addr == MAP_FAILED) return errno_error("mmap io descriptors");
    descs_map_ = Mapping(desc_addr, desc_len);
    descs_ = static_cast<const uapi::IoDesc*>(desc_addr);
    // The backend reaches the data through the char device, or never.
    if (c_.user_copy && !c_.bridge_copy) return {};
    if (c_.auto_buf_reg) {
      // The kernel lends each request's own pages, into a table slot per tag.
      if (const int ret = io_uring_register_buffers_sparse(r_, c_.depth); ret < 0)
        return Error(ret, "io_uring register a sparse buffer table of " + std::to_string(c_.depth) +
                              " entries");
      return {};
    }
    // Reserved, not committed: a tag's pages are only backed once a request
    // of that size has used them.
    const size_t buf_len = static_cast<size_t>(c_.depth) * c_.buf_bytes;
    void* buf_addr = ::mmap(nullptr, buf_len, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (buf_addr == MAP_FAILED) return errno_error("mmap io buffers");
    bufs_map_ = Mapping(buf_addr, buf_len);
    buf_base_ = static_cast<char*>(buf_addr);
    // A tag's buffer is as large as the largest request, but most requests
    // touch a few pages of it; with transparent huge pages each touch would
    // back 2 MiB, and a deep queue of small requests would take gigabytes.
    // Advice only: a kernel without THP has nothing to turn off.
    (void)::madvise(buf_addr, buf_len, MADV_NOHUGEPAGE);
    return {};
  }

  // The read of the wake eventfd and a FETCH_REQ per tag, submitted.
  Result<void> prime() {
    if (!arm_wake()) return Error(EBUSY, "queue ring has no room");
    if (c_.batch_io) return prime_batch();
    for (uint16_t tag = 0; tag < c_.depth; ++tag) {
      if (c_.unprimed_tag && *c_.unprimed_tag == tag) continue;
      if (!queue_cmd(fetch_op_, tag, 0)) return Error(EBUSY, "queue ring has no room");
      ++outstanding_;
    }
    if (auto r = ring_.submit_all(); !r) return r.error().wrap("submit fetches");
    return {};
  }

  // Serves requests until the kernel hands every tag back (the device
  // stopped) or the worker is asked to stop.
  Result<void> run() {
    while (busy() && !stop_) {
      const int ret = wait_for_work();
      if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
        return Error(ret, "io_uring_enter");
      reap();
    }
    // Commits queued in the last pass answer requests the kernel still
    // waits for: they go out before the ring does, or those requests would
    // only end when the kernel aborts them.
    flush_commits();
    if (io_uring_sq_ready(r_) > 0) (void)ring_.submit_all();
    if (first_error_) return *first_error_;
    return {};
  }

  unsigned ring_flags() const { return ring_.flags(); }

  // QueueContext::finish / waiting / set_deadline.
  void finish(uint16_t tag, int result) {
    uint8_t& state = tag_state_[tag];
    if (state & kTagStale) {
      state = 0;  // the failed request's I/O is over
      return;
    }
    if (!(state & kTagInBackend)) return;
    state = 0;
    commit(tag, result);
  }
  bool waiting(uint16_t tag) const {
    return (tag_state_[tag] & (kTagInBackend | kTagStale)) == kTagInBackend;
  }
  void set_deadline(uint16_t tag, Clock::time_point deadline) {
    deadline_[tag] =
        deadline == Clock::time_point::max()
            ? kNoDeadline
            : std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch())
                  .count();
    if (deadline_[tag] != kNoDeadline) ensure_timer();
  }

 private:
  static uint64_t round_up(uint64_t v, uint64_t align) { return (v + align - 1) / align * align; }

  char* buffer(uint16_t tag) const {
    if (buf_base_ == nullptr) return nullptr;
    return buf_base_ + static_cast<size_t>(tag) * c_.buf_bytes;
  }

  // The buffer the kernel copies to and from: none under USER_COPY, which
  // refuses commands that name one.
  uint64_t kernel_addr(uint16_t tag) const {
    return c_.user_copy ? 0 : reinterpret_cast<uintptr_t>(buffer(tag));
  }

  // bridge_copy: moves `len` bytes between the request's pages and the
  // tag's buffer through the char device, into the request for a READ's
  // data and out of it for a WRITE's; `len`, or -EIO.
  int bridge(uint16_t tag, uint32_t len, bool into_request) const {
    auto* buf = reinterpret_cast<std::byte*>(buffer(tag));
    const uint64_t pos = uapi::user_copy_pos(c_.queue_id, tag);
    const int r = into_request ? pwrite_all(c_.char_fd, buf, len, pos)
                               : pread_all(c_.char_fd, buf, len, pos);
    return r < 0 ? -EIO : static_cast<int>(len);
  }

  bool work_ready() const {
    return (IO_URING_READ_ONCE(*r_->sq.kflags) & IORING_SQ_TASKRUN) != 0 ||
           io_uring_cq_ready(r_) > 0;
  }

  bool queue_cmd(uint32_t op, uint16_t tag, int32_t result) {
    io_uring_sqe* sqe = ring_.get_sqe();
    if (sqe == nullptr) return false;
    uapi::IoCmd cmd{};
    cmd.q_id = c_.queue_id;
    cmd.tag = tag;
    cmd.result = result;
    cmd.addr = kernel_addr(tag);
    prep_uring_cmd(sqe, 0, op, cmd);  // fixed file 0 is the char device
    sqe->flags |= IOSQE_FIXED_FILE;
    // No fallback flag: slot `tag` is this tag's alone, so registration
    // can only fail for want of memory, and then the request fails rather
    // than reaching us without its pages.
    if (c_.auto_buf_reg) sqe->addr = uapi::auto_buf_reg_sqe_addr(uapi::AutoBufReg{tag, 0, 0, 0});
    sqe->user_data = user_data::io_command(tag);
    return true;
  }

  // Submits what is queued and waits, spinning first while work tends to
  // come soon (IdlePoll); returns what io_uring_enter returned.
  int wait_for_work() {
    flush_commits();
    if (work_ready()) return io_uring_submit_and_get_events(r_);
    // The commits go out first: they complete requests, and the next ones
    // follow them.
    int ret = io_uring_submit(r_);
    // The last answers may have been all the loop was waiting for.
    if (take_commit_completions() && !busy()) return ret;
    const auto idle_since = IdlePoll::Clock::now();
    if (ret >= 0 && idle_.spin([this] { return work_ready(); })) return io_uring_get_events(r_);
    if (ret >= 0) {
      ret = io_uring_submit_and_wait(r_, 1);
      idle_.record(IdlePoll::Clock::now() - idle_since);
    }
    return ret;
  }

  bool arm_wake() {
    io_uring_sqe* sqe = ring_.get_sqe();
    if (sqe == nullptr) return false;
    io_uring_prep_read(sqe, wake_fd_, &wake_value_, sizeof(wake_value_), 0);
    sqe->user_data = user_data::kWake;
    return true;
  }

  // The one timer of the loop: while requests with a deadline wait on the
  // backend it ticks (tick_ns_), and a stop's grace ends at a tick or at
  // its own expiry, whichever is first.
  bool arm_timer(int64_t ns) {
    if (timer_armed_) return true;
    io_uring_sqe* sqe = ring_.get_sqe();
    if (sqe == nullptr) return false;
    ns = std::max<int64_t>(ns, 0);
    timer_ts_.tv_sec = ns / 1'000'000'000;
    timer_ts_.tv_nsec = ns % 1'000'000'000;
    io_uring_prep_timeout(sqe, &timer_ts_, 0, 0);
    sqe->user_data = user_data::kTimer;
    timer_armed_ = true;
    return true;
  }

  // Arms the tick for a deadline that was just set. Without room in the
  // ring it is armed by the next request or completion that finds room.
  void ensure_timer() {
    if (!timer_armed_) (void)arm_timer(next_tick_ns(now_ns()));
  }

  int64_t next_tick_ns(int64_t now) const {
    int64_t next = tick_ns_;
    if (stop_fail_at_ns_ != kNoDeadline) next = std::min(next, stop_fail_at_ns_ - now);
    return next;
  }

  // What the control plane asked for since the last wake-up.
  void take_commands() {
    const unsigned cmds = commands_.exchange(0, std::memory_order_acquire);
    if (cmds & kCmdStop) stop_ = true;
    if (cmds & kCmdFailUnanswered) {
      const int64_t now = now_ns();
      stop_fail_at_ns_ = now + fail_after_ns_.load(std::memory_order_relaxed);
      // A timer armed already ticks sooner than the grace ends or is
      // rearmed then; without room for one they are failed now rather than
      // never.
      if (!timer_armed_ && !arm_timer(next_tick_ns(now))) {
        stop_fail_at_ns_ = kNoDeadline;
        fail_unanswered();
      }
    }
    if (!stop_ && !arm_wake()) fail_loop(Error(EBUSY, "queue ring has no room"));
  }

  // The timer expired: fail what is past its deadline (or everything, once
  // a stop's grace is over) and tick again while deadlines remain.
  void on_timer() {
    timer_armed_ = false;
    const int64_t now = now_ns();
    if (stop_fail_at_ns_ != kNoDeadline && now >= stop_fail_at_ns_) {
      stop_fail_at_ns_ = kNoDeadline;
      fail_unanswered();
    }
    bool pending = false;
    for (uint16_t tag = 0; tag < c_.depth; ++tag) {
      if (!waiting(tag) || deadline_[tag] == kNoDeadline) continue;
      if (deadline_[tag] <= now) {
        tag_state_[tag] = kTagStale;
        commit(tag, -EIO);
      } else {
        pending = true;
      }
    }
    if (pending || stop_fail_at_ns_ != kNoDeadline) (void)arm_timer(next_tick_ns(now));
  }

  // The requests the backend holds are answered with EIO now; its late
  // answers to them are dropped when they come.
  void fail_unanswered() {
    uint32_t failed = 0;
    for (uint16_t tag = 0; tag < c_.depth; ++tag) {
      if ((tag_state_[tag] & (kTagInBackend | kTagStale)) != kTagInBackend) continue;
      tag_state_[tag] = kTagStale;
      commit(tag, -EIO);
      ++failed;
    }
    failed_unanswered_.fetch_add(failed, std::memory_order_acq_rel);
  }

  void fail_loop(Error e) {
    if (!first_error_) first_error_ = std::move(e);
    stop_ = true;
  }

  // One pass over the completions.
  void reap() {
    unsigned head;
    unsigned seen = 0;
    pass_ns_ = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(r_, head, cqe) {
      ++seen;
      on_completion(*cqe);
    }
    io_uring_cq_advance(r_, seen);
  }

  void on_completion(const io_uring_cqe& cqe) {
    if (cqe.user_data == user_data::kWake) return take_commands();
    if (cqe.user_data == user_data::kTimer) return on_timer();
    if (cqe.user_data == user_data::kFetchCmds) return on_fetched(cqe);
    if (user_data::is_commit_cmds(cqe.user_data)) return on_committed(cqe);
    if (user_data::is_backend_event(cqe.user_data)) return backend_.on_event(ctx_, cqe);
    const uint16_t tag = user_data::tag_of(cqe.user_data);
    if (user_data::is_backend(cqe.user_data)) return on_backend_completion(tag, cqe);
    if (cqe.res == uapi::kIoResOk) return take_request(tag);
    // UBLK_IO_RES_ABORT: the device is stopping and hands the tag back.
    // Anything else is a protocol error; the tag is gone either way.
    --outstanding_;
    if (cqe.res != uapi::kIoResAbort && !first_error_)
      first_error_ = Error(cqe.res, "io command for tag " + std::to_string(tag));
  }

  void on_backend_completion(uint16_t tag, const io_uring_cqe& cqe) {
    if (tag_state_[tag] & kTagStale) {
      tag_state_[tag] = 0;  // the failed request's I/O is over
      return;
    }
    const int result = backend_.complete(ctx_, cqe);
    if (result == kIoQueued) return;
    tag_state_[tag] = 0;
    commit(tag, result);
  }

  // Answers the tag's request with `result`, unless the backend queued it.
  void commit(uint16_t tag, int result) {
    if (result == kIoQueued) {
      tag_state_[tag] = kTagInBackend;
      if (deadline_[tag] != kNoDeadline) ensure_timer();
      return;
    }
    if (c_.bridge_copy && result > 0 && uapi::io_desc_op(descs_[tag]) == uapi::kOpRead)
      result = bridge(tag, static_cast<uint32_t>(result), true);
    if (c_.batch_io) {
      if (held_ == 0 || !add_commit(tag, result))
        return fail_loop(Error(EPROTO, "a second answer for tag " + std::to_string(tag)));
      --held_;
    } else if (!queue_cmd(commit_op_, tag, result)) {
      return fail_loop(Error(EBUSY, "queue ring has no room for a commit"));
    }
    count_answer(tag, result);
  }

  // A request the kernel handed out (its FETCH_REQ completed, or its tag was
  // in a FETCH_IO_CMDS list): served, and answered unless the backend
  // queued it.
  void take_request(uint16_t tag) {
    // One clock read per pass: the requests it fetched came together.
    if (pass_ns_ == 0) pass_ns_ = now_ns();
    received_ns_[tag] = pass_ns_;
    stats_.received();
    commit(tag, serve(tag));
  }

  void count_answer(uint16_t tag, int result) {
    const uapi::IoDesc& d = descs_[tag];
    const uint8_t op = uapi::io_desc_op(d);
    const uint64_t len = static_cast<uint64_t>(d.nr_sectors) << 9;
    const bool rw = op == uapi::kOpRead || op == uapi::kOpWrite;
    const uint64_t bytes = rw && result >= 0 ? static_cast<uint64_t>(result) : len;
    const int64_t waited_ns = now_ns() - received_ns_[tag];
    stats_.answered(op, result, bytes, waited_ns > 0 ? static_cast<uint64_t>(waited_ns) / 1000 : 0);
  }

  // Whether the kernel may still hand out a request or waits for an answer.
  bool busy() const {
    if (!c_.batch_io) return outstanding_ > 0;
    return fetch_armed_ || held_ > 0 || open_slot_ || commits_in_flight_ > 0;
  }

  // ---- UBLK_F_BATCH_IO ------------------------------------------------------

  // The fetch buffer ring, one PREP_IO_CMDS for every tag and the multishot
  // FETCH_IO_CMDS, submitted; primed once the kernel accepted the PREP (it
  // runs it as it is submitted, so its completion is there at once).
  Result<void> prime_batch() {
    if (auto r = batch_->register_fetch_ring(r_); !r) return r;
    const uint16_t slot = batch_->take_slot();
    for (uint16_t tag = 0; tag < c_.depth; ++tag) {
      if (c_.unprimed_tag && *c_.unprimed_tag == tag) continue;
      batch_->add(slot, tag, 0, kernel_addr(tag));
    }
    if (!queue_list(uapi::kIoPrepIoCmds, slot, user_data::kPrepCmds) || !arm_fetch())
      return Error(EBUSY, "queue ring has no room");
    if (auto r = ring_.submit_all(); !r) return r.error().wrap("submit PREP_IO_CMDS");
    for (;;) {
      auto cqe = ring_.wait_cqe(std::chrono::seconds(5));
      if (!cqe) return cqe.error().wrap("wait for PREP_IO_CMDS");
      const io_uring_cqe c = **cqe;
      io_uring_cqe_seen(r_, *cqe);
      if (c.user_data == user_data::kPrepCmds) {
        const uint16_t tags = batch_->elements(slot);
        batch_->free_slot(slot);
        if (c.res < 0) return Error(c.res, "PREP_IO_CMDS for " + std::to_string(tags) + " tags");
        return {};
      }
      if (c.user_data == user_data::kFetchCmds && !(c.flags & IORING_CQE_F_MORE) && c.res < 0 &&
          c.res != -ENOBUFS)
        return Error(c.res, "FETCH_IO_CMDS");
      on_completion(c);
    }
  }

  bool arm_fetch() {
    io_uring_sqe* sqe = ring_.get_sqe();
    if (sqe == nullptr) return false;
    batch_->prep_fetch(sqe);
    sqe->user_data = user_data::kFetchCmds;
    fetch_armed_ = true;
    return true;
  }

  bool queue_list(uint8_t op, uint16_t slot, uint64_t ud) {
    io_uring_sqe* sqe = ring_.get_sqe();
    if (sqe == nullptr) return false;
    batch_->prep_list(sqe, op, slot);
    sqe->user_data = ud;
    return true;
  }

  // A FETCH_IO_CMDS completion: a list of tags whose requests are ready, or
  // the end of the multishot (the kernel aborts it when the device stops
  // or quiesces; it ends too when it found no buffer, and is then armed
  // again).
  void on_fetched(const io_uring_cqe& cqe) {
    for (const uint16_t tag : batch_->fetched(cqe)) {
      if (tag >= c_.depth) {
        if (!first_error_)
          first_error_ = Error(EPROTO, "FETCH_IO_CMDS gave tag " + std::to_string(tag));
        continue;
      }
      ++held_;
      take_request(tag);
    }
    batch_->give_back(cqe);
    if (cqe.flags & IORING_CQE_F_MORE) return;
    fetch_armed_ = false;
    if (cqe.res == uapi::kIoResAbort || stop_) return;
    if (cqe.res < 0 && cqe.res != -ENOBUFS) {
      if (!first_error_) first_error_ = Error(cqe.res, "FETCH_IO_CMDS");
      return;
    }
    if (!arm_fetch()) fail_loop(Error(EBUSY, "queue ring has no room for FETCH_IO_CMDS"));
  }

  // The tag's answer, into this pass's COMMIT_IO_CMDS.
  bool add_commit(uint16_t tag, int result) {
    if (!open_slot_) open_slot_ = batch_->take_slot();
    return batch_->add(*open_slot_, tag, result, kernel_addr(tag));
  }

  // This pass's answers, as one COMMIT_IO_CMDS.
  void flush_commits() {
    if (!open_slot_) return;
    const uint16_t slot = *open_slot_;
    open_slot_.reset();
    if (!queue_list(uapi::kIoCommitIoCmds, slot, user_data::commit_cmds(slot)))
      return fail_loop(Error(EBUSY, "queue ring has no room for COMMIT_IO_CMDS"));
    ++commits_in_flight_;
  }

  // A COMMIT_IO_CMDS completes as it is submitted: its completion, first in
  // the queue, is no reason to stay awake (which would cost a second
  // io_uring_enter for every pass).
  // True if it took any.
  bool take_commit_completions() {
    if (commits_in_flight_ == 0) return false;
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(r_, head, cqe) {
      if (!user_data::is_commit_cmds(cqe->user_data)) break;
      on_committed(*cqe);
      ++seen;
    }
    io_uring_cq_advance(r_, seen);
    return seen > 0;
  }

  // The kernel answers with how many bytes of elements it took, or an
  // error if it refused the first. It stops at an element it refuses, which
  // only a broken protocol makes it do: that request is lost to us (an
  // error of the queue), but the answers after it are sent again.
  void on_committed(const io_uring_cqe& cqe) {
    const uint16_t slot = user_data::cookie_of(cqe.user_data);
    --commits_in_flight_;
    if (cqe.res == batch_->bytes(slot)) return batch_->free_slot(slot);
    const auto refused = static_cast<uint16_t>(std::max(cqe.res, 0) / batch_->elem_bytes());
    if (!first_error_) {
      first_error_ = Error(cqe.res < 0 ? -cqe.res : EPROTO,
                           "COMMIT_IO_CMDS refused the answer for tag " +
                               std::to_string(batch_->tag_at(slot, refused)));
    }
    const uint16_t rest = batch_->take_rest(slot, static_cast<uint16_t>(refused + 1));
    batch_->free_slot(slot);
    if (batch_->elements(rest) == 0) return batch_->free_slot(rest);
    if (!queue_list(uapi::kIoCommitIoCmds, rest, user_data::commit_cmds(rest)))
      return fail_loop(Error(EBUSY, "queue ring has no room for COMMIT_IO_CMDS"));
    ++commits_in_flight_;
  }

  // The request the kernel put in the tag's io descriptor: its result, or
  // kIoQueued.
  int serve(uint16_t tag) {
    // The tag's previous request was failed while the backend still had
    // I/O for it, which may yet write into the tag's buffer.
    if (tag_state_[tag] & kTagStale) return -EIO;
    const uapi::IoDesc d = descs_[tag];
    const uint8_t op = uapi::io_desc_op(d);
    const uint64_t len = static_cast<uint64_t>(d.nr_sectors) << 9;
    if (op > uapi::kOpWriteZeroes || op == uapi::kOpWriteSame) return -EOPNOTSUPP;
    if (c_.read_only && op != uapi::kOpRead && op != uapi::kOpFlush) return -EROFS;
    const bool rw = op == uapi::kOpRead || op == uapi::kOpWrite;
    if (rw && len > c_.buf_bytes) return -EIO;  // cannot happen with max_sectors set from buf_bytes
    IoRequest req{static_cast<IoOp>(op),
                  uapi::io_desc_flags(d),
                  d.start_sector << 9,
                  static_cast<uint32_t>(len),
                  buffer(tag),
                  c_.queue_id,
                  tag};
    if (c_.auto_buf_reg && rw) req.buf_index = tag;
    if (c_.user_copy && !c_.bridge_copy) {
      req.copy_fd = c_.char_fd;
      req.copy_pos = uapi::user_copy_pos(c_.queue_id, tag);
    }
    if (c_.bridge_copy && op == uapi::kOpWrite) {
      if (const int r = bridge(tag, static_cast<uint32_t>(len), false); r < 0) return r;
    }
    // Before submit(), which may set a deadline of its own.
    deadline_[tag] = timeout_ns_ > 0 ? now_ns() + timeout_ns_ : kNoDeadline;
    return backend_.submit(ctx_, req);
  }

  const QueueConfig& c_;
  Backend& backend_;
  // With batch_io; before ring_, which it must outlive.
  std::optional<BatchCommands> batch_;
  Ring ring_;
  io_uring* const r_;
  IdlePoll idle_;
  WorkerContext ctx_;
  bool attached_ = false;
  int wake_fd_;
  uint64_t wake_value_ = 0;
  __kernel_timespec timer_ts_{};
  std::atomic<unsigned>& commands_;
  const std::atomic<int64_t>& fail_after_ns_;
  std::atomic<uint32_t>& failed_unanswered_;
  QueueStats& stats_;
  // kTagInBackend / kTagStale per tag.
  std::vector<uint8_t> tag_state_;
  // Per tag, when its request came (the pass that fetched it; steady ns).
  std::vector<int64_t> received_ns_;
  int64_t pass_ns_ = 0;  // the current pass's clock, 0 until read
  // Per tag, when a request waiting on the backend is failed (steady clock,
  // ns), or kNoDeadline.
  std::vector<int64_t> deadline_;
  const int64_t timeout_ns_;  // Backend::request_timeout(); 0: none
  const int64_t tick_ns_;
  bool timer_armed_ = false;
  // When a stop's grace ends (fail_unanswered_after), or kNoDeadline.
  int64_t stop_fail_at_ns_ = kNoDeadline;
  Mapping descs_map_;
  const uapi::IoDesc* descs_ = nullptr;
  Mapping bufs_map_;
  char* buf_base_ = nullptr;
  const uint32_t fetch_op_;
  const uint32_t commit_op_;
  uint32_t outstanding_ = 0;
  // With batch_io: the multishot fetch is armed; requests taken and not yet
  // answered; COMMIT_IO_CMDS submitted and not completed.
  bool fetch_armed_ = false;
  uint32_t held_ = 0;
  uint32_t commits_in_flight_ = 0;
  std::optional<uint16_t> open_slot_;  // the slot this pass's answers go to
  bool stop_ = false;
  std::optional<Error> first_error_;
};

void WorkerContext::finish(uint16_t tag, int result) {
  loop_.finish(tag, result);
}
bool WorkerContext::waiting(uint16_t tag) const {
  return loop_.waiting(tag);
}
void WorkerContext::set_deadline(uint16_t tag, Clock::time_point deadline) {
  loop_.set_deadline(tag, deadline);
}

}  // namespace

Result<void> QueueWorker::serve() {
  bool primed_reported = false;
  auto fail = [&](Error e) -> Result<void> {
    if (!primed_reported) {
      primed_.set_value(e);
      primed_reported = true;
    }
    return e;
  };
  auto ring = make_ring(config_.depth);
  if (!ring) return fail(ring.error());
  QueueLoop loop(config_, backend_, std::move(ring).value(), wake_fd_.get(), commands_,
                 fail_after_ns_, failed_unanswered_, stats_);
  ring_flags_.store(loop.ring_flags(), std::memory_order_release);
  if (auto r = loop.attach(); !r) return fail(r.error());
  if (auto r = loop.map(); !r) return fail(r.error());
  if (auto r = loop.prime(); !r) return fail(r.error());
  primed_.set_value({});
  primed_reported = true;
  return loop.run();
}

}  // namespace ublkd
