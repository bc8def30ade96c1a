#include "queue/queue_worker.h"

#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "base/mapping.h"
#include "queue/idle_poll.h"
#include "uapi/ublk.h"
#include "uring/ring.h"

namespace ublkd {

namespace {

// user_data layout: the low 16 bits carry the tag of a ublk io command; the
// wake eventfd's read and the timer are told apart by bits no tag can have.
constexpr uint64_t kWakeUserData = 1ull << 32;
constexpr uint64_t kTimerUserData = (1ull << 32) | 1;

// What the control plane asks of the loop (QueueWorker::commands_).
constexpr unsigned kCmdStop = 1;
constexpr unsigned kCmdFailUnanswered = 2;

// Per tag, what the loop knows beyond the kernel's descriptor.
constexpr uint8_t kTagInBackend = 1;  // handed to the backend, not answered yet
constexpr uint8_t kTagStale = 2;      // failed while the backend still had I/O for it

uint64_t round_up(uint64_t v, uint64_t align) {
  return (v + align - 1) / align * align;
}

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
  // steady_clock is CLOCK_MONOTONIC.
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::max(deadline, std::chrono::steady_clock::now()).time_since_epoch())
                      .count();
  const timespec until{static_cast<time_t>(ns / 1'000'000'000),
                       static_cast<long>(ns % 1'000'000'000)};
  if (::pthread_clockjoin_np(thread_, nullptr, CLOCK_MONOTONIC, &until) != 0) {
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

class WorkerContext final : public QueueContext {
 public:
  WorkerContext(Ring& ring, uint16_t queue_id, uint16_t depth, int file_index)
      : ring_(ring), queue_id_(queue_id), depth_(depth), file_index_(file_index) {}
  uint16_t queue_id() const override { return queue_id_; }
  uint16_t depth() const override { return depth_; }
  io_uring_sqe* get_sqe() override { return ring_.get_sqe(); }
  int backend_file_index() const override { return file_index_; }

 private:
  Ring& ring_;
  uint16_t queue_id_;
  uint16_t depth_;
  int file_index_;
};

}  // namespace

Result<void> QueueWorker::serve() {
  const QueueConfig& c = config_;
  bool primed_reported = false;
  auto fail = [&](Error e) -> Result<void> {
    if (!primed_reported) {
      primed_.set_value(e);
      primed_reported = true;
    }
    return e;
  };

  // Per tag at most one ublk command and one backend SQE are queued at once,
  // plus the wake eventfd's read and a timer.
  // The kernel runs a completion's task work when this thread next waits
  // (DEFER_TASKRUN), instead of interrupting it (an IPI and a trip through
  // the signal path under COOP_TASKRUN alone, a forced one without either):
  // one pass of the loop then reaps everything that became ready. The ring
  // is only ever used from this thread (SINGLE_ISSUER).
  // TASKRUN_FLAG: the kernel raises IORING_SQ_TASKRUN when task work waits,
  // which is what lets an idle thread watch for work without entering the
  // kernel (IdlePoll below).
  auto ring_r = Ring::create_probed(2u * c.depth + 2u, 0,
                                    IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
                                        IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
  if (!ring_r) return fail(ring_r.error());
  Ring ring = std::move(ring_r).value();
  ring_flags_.store(ring.flags(), std::memory_order_release);
  // Each io_uring_enter then skips looking the ring's fd up. Optional: a
  // kernel without it (before 5.18) serves the same, a little slower.
  (void)io_uring_register_ring_fd(ring.get());
  IdlePoll idle((ring.flags() & IORING_SETUP_TASKRUN_FLAG) ? c.idle_spin
                                                           : std::chrono::nanoseconds(0));
  io_uring* const r = ring.get();
  auto work_ready = [r] {
    return (IO_URING_READ_ONCE(*r->sq.kflags) & IORING_SQ_TASKRUN) != 0 || io_uring_cq_ready(r) > 0;
  };
  const int backend_fd = backend_.attach_fd();
  const int files[2] = {c.char_fd, backend_fd};
  if (auto r = ring.register_files(files, backend_fd >= 0 ? 2 : 1); !r) return fail(r.error());
  WorkerContext ctx(ring, c.queue_id, c.depth, backend_fd >= 0 ? 1 : -1);
  if (auto r = backend_.attach(ctx); !r) return fail(r.error().wrap("backend"));
  struct Detach {
    Backend& b;
    QueueContext& q;
    ~Detach() { b.detach(q); }
  } detach{backend_, ctx};
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const size_t desc_len = round_up(c.depth * sizeof(uapi::IoDesc), page);
  void* desc_addr = ::mmap(nullptr, desc_len, PROT_READ, MAP_SHARED | MAP_POPULATE, c.char_fd,
                           static_cast<off_t>(uapi::io_desc_mmap_offset(c.queue_id, page)));
  if (desc_addr == MAP_FAILED) return fail(errno_error("mmap io descriptors"));
  Mapping descs_map(desc_addr, desc_len);
  const auto* descs = static_cast<const uapi::IoDesc*>(desc_addr);

  // Buffers are reserved, not committed: a tag's pages are only backed once
  // a request of that size has used them. With automatic buffer
  // registration there are none: the kernel lends the request's own pages,
  // into a table slot per tag.
  Mapping bufs_map;
  char* buf_base = nullptr;
  if (c.user_copy) {
    // Nothing to set up: the backend reaches the data through the char
    // device, or never does.
  } else if (c.auto_buf_reg) {
    if (const int ret = io_uring_register_buffers_sparse(ring.get(), c.depth); ret < 0)
      return fail(Error(ret, "io_uring register a sparse buffer table of " +
                                 std::to_string(c.depth) + " entries"));
  } else {
    const size_t buf_len = static_cast<size_t>(c.depth) * c.buf_bytes;
    void* buf_addr = ::mmap(nullptr, buf_len, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (buf_addr == MAP_FAILED) return fail(errno_error("mmap io buffers"));
    bufs_map = Mapping(buf_addr, buf_len);
    // A tag's buffer is as large as the largest request, but most requests
    // touch a few pages of it; with transparent huge pages each touch would
    // back 2 MiB, and a deep queue of small requests would take gigabytes.
    // Advice only: a kernel without THP has nothing to turn off.
    (void)::madvise(buf_addr, buf_len, MADV_NOHUGEPAGE);
    buf_base = static_cast<char*>(buf_addr);
  }
  auto buffer = [&](uint16_t tag) -> char* {
    if (buf_base == nullptr) return nullptr;
    return buf_base + static_cast<size_t>(tag) * c.buf_bytes;
  };

  const uint32_t fetch_op =
      c.ioctl_encoding ? uapi::io_op_ioctl(uapi::kIoFetchReq) : uint32_t{uapi::kIoFetchReq};
  const uint32_t commit_op = c.ioctl_encoding ? uapi::io_op_ioctl(uapi::kIoCommitAndFetchReq)
                                              : uint32_t{uapi::kIoCommitAndFetchReq};
  auto queue_cmd = [&](uint32_t op, uint16_t tag, int32_t result) -> bool {
    io_uring_sqe* sqe = ring.get_sqe();
    if (sqe == nullptr) return false;
    uapi::IoCmd cmd{};
    cmd.q_id = c.queue_id;
    cmd.tag = tag;
    cmd.result = result;
    cmd.addr = reinterpret_cast<uintptr_t>(buffer(tag));
    prep_uring_cmd(sqe, 0, op, cmd);  // fixed file 0 is the char device
    sqe->flags |= IOSQE_FIXED_FILE;
    // No fallback flag: slot `tag` is this tag's alone, so registration
    // can only fail for want of memory, and then the request fails rather
    // than reaching us without its pages.
    if (c.auto_buf_reg) sqe->addr = uapi::auto_buf_reg_sqe_addr(uapi::AutoBufReg{tag, 0, 0, 0});
    sqe->user_data = tag;
    return true;
  };

  uint64_t wake_value = 0;
  auto arm_wake = [&]() -> bool {
    io_uring_sqe* sqe = ring.get_sqe();
    if (sqe == nullptr) return false;
    io_uring_prep_read(sqe, wake_fd_.get(), &wake_value, sizeof(wake_value), 0);
    sqe->user_data = kWakeUserData;
    return true;
  };
  if (!arm_wake()) return fail(Error(EBUSY, "queue ring has no room"));
  __kernel_timespec timer_ts{};
  auto arm_timer = [&](int64_t ns) -> bool {
    io_uring_sqe* sqe = ring.get_sqe();
    if (sqe == nullptr) return false;
    timer_ts.tv_sec = ns / 1'000'000'000;
    timer_ts.tv_nsec = ns % 1'000'000'000;
    io_uring_prep_timeout(sqe, &timer_ts, 0, 0);
    sqe->user_data = kTimerUserData;
    return true;
  };

  uint32_t outstanding = 0;
  for (uint16_t tag = 0; tag < c.depth; ++tag) {
    if (c.unprimed_tag && *c.unprimed_tag == tag) continue;
    if (!queue_cmd(fetch_op, tag, 0)) return fail(Error(EBUSY, "queue ring has no room"));
    ++outstanding;
  }
  if (auto r = ring.submit_all(); !r) return fail(r.error().wrap("submit fetches"));
  primed_.set_value({});
  primed_reported = true;

  // kTagInBackend / kTagStale per tag; touched by this thread only.
  std::vector<uint8_t> tag_state(c.depth, 0);
  std::optional<Error> first_error;
  bool stop = false;
  auto commit = [&](uint16_t tag, int result) {
    if (!queue_cmd(commit_op, tag, result)) {
      first_error = Error(EBUSY, "queue ring has no room for a commit");
      stop = true;
    }
  };
  // The requests the backend holds are answered with EIO now; its late
  // answers to them are dropped when they come.
  auto fail_unanswered = [&] {
    uint32_t failed = 0;
    for (uint16_t tag = 0; tag < c.depth; ++tag) {
      if ((tag_state[tag] & (kTagInBackend | kTagStale)) != kTagInBackend) continue;
      tag_state[tag] = kTagStale;
      commit(tag, -EIO);
      ++failed;
    }
    failed_unanswered_.fetch_add(failed, std::memory_order_acq_rel);
  };
  auto take_commands = [&] {
    const unsigned cmds = commands_.exchange(0, std::memory_order_acquire);
    if (cmds & kCmdStop) stop = true;
    if ((cmds & kCmdFailUnanswered) && !arm_timer(fail_after_ns_.load(std::memory_order_relaxed)))
      fail_unanswered();  // no room for the timer: fail them now rather than never
    if (!stop && !arm_wake()) first_error = Error(EBUSY, "queue ring has no room"), stop = true;
  };
  auto serve_request = [&](uint16_t tag) -> int {
    // The tag's previous request was failed while the backend still had
    // I/O for it, which may yet write into the tag's buffer.
    if (tag_state[tag] & kTagStale) return -EIO;
    const uapi::IoDesc d = descs[tag];
    const uint8_t op = uapi::io_desc_op(d);
    const uint64_t len = static_cast<uint64_t>(d.nr_sectors) << 9;
    if (op > uapi::kOpWriteZeroes || op == uapi::kOpWriteSame) return -EOPNOTSUPP;
    if (c.read_only && op != uapi::kOpRead && op != uapi::kOpFlush) return -EROFS;
    // Cannot happen with max_sectors set from buf_bytes.
    if ((op == uapi::kOpRead || op == uapi::kOpWrite) && len > c.buf_bytes) return -EIO;
    IoRequest req{static_cast<IoOp>(op),
                  uapi::io_desc_flags(d),
                  d.start_sector << 9,
                  static_cast<uint32_t>(len),
                  buffer(tag),
                  c.queue_id,
                  tag};
    if (c.auto_buf_reg && (op == uapi::kOpRead || op == uapi::kOpWrite)) req.buf_index = tag;
    if (c.user_copy) {
      req.copy_fd = c.char_fd;
      req.copy_pos = uapi::user_copy_pos(c.queue_id, tag);
    }
    const int result = backend_.submit(ctx, req);
    if (result == kIoQueued) tag_state[tag] = kTagInBackend;
    return result;
  };

  while (outstanding > 0) {
    int ret;
    if (work_ready()) {
      ret = io_uring_submit_and_get_events(r);
    } else {
      // The commits go out first: they complete requests, and the next
      // ones follow them.
      ret = io_uring_submit(r);
      const auto idle_since = IdlePoll::Clock::now();
      if (ret >= 0 && idle.spin(work_ready)) {
        ret = io_uring_get_events(r);
      } else if (ret >= 0) {
        ret = io_uring_submit_and_wait(r, 1);
        idle.record(IdlePoll::Clock::now() - idle_since);
      }
    }
    if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
      return Error(ret, "io_uring_enter");

    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(ring.get(), head, cqe) {
      ++seen;
      if (cqe->user_data == kWakeUserData) {
        take_commands();
        continue;
      }
      if (cqe->user_data == kTimerUserData) {
        fail_unanswered();
        continue;
      }
      const auto tag = static_cast<uint16_t>(cqe->user_data);
      if (cqe->user_data & QueueContext::kBackendBit) {
        if (tag_state[tag] & kTagStale) {
          tag_state[tag] = 0;  // the failed request's I/O is over
          continue;
        }
        const int result = backend_.complete(ctx, *cqe);
        if (result == kIoQueued) continue;
        tag_state[tag] = 0;
        commit(tag, result);
        continue;
      }
      if (cqe->res == uapi::kIoResOk) {
        const int result = serve_request(tag);
        if (result != kIoQueued) commit(tag, result);
      } else {
        // UBLK_IO_RES_ABORT: the device is stopping and hands the tag back.
        // Anything else is a protocol error; the tag is gone either way.
        --outstanding;
        if (cqe->res != uapi::kIoResAbort && !first_error)
          first_error = Error(cqe->res, "io command for tag " + std::to_string(tag));
      }
    }
    io_uring_cq_advance(ring.get(), seen);
    if (stop) break;
  }
  // Commits queued in the last pass answer requests the kernel still
  // waits for: they go out before the ring does, or those requests would
  // only end when the kernel aborts them.
  if (io_uring_sq_ready(ring.get()) > 0) (void)ring.submit_all();
  if (first_error) return *first_error;
  return {};
}

}  // namespace ublkd
