// One hardware queue of a ublk device, served by its own thread and its own
// io_uring: the device's char fd registered as fixed file 0, the queue's io
// descriptors mapped read-only, one buffer per tag, a FETCH_REQ per tag, then
// the COMMIT_AND_FETCH_REQ loop until the kernel aborts the fetches (device
// stopped) or the control plane asks the thread to quit. With
// UBLK_F_BATCH_IO the same loop arms, fetches and commits many tags per
// command (QueueConfig::batch_io).
#pragma once

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <optional>
#include <string>

#include "backend/backend.h"
#include "base/abort_signal.h"
#include "base/error.h"
#include "base/unique_fd.h"
#include "queue/queue_stats.h"

namespace ublkd {

struct QueueConfig {
  uint32_t dev_id = 0;
  uint16_t queue_id = 0;
  uint16_t depth = 0;
  uint32_t buf_bytes = 0;  // per tag; the device's max_io_buf_bytes
  int char_fd = -1;        // /dev/ublkcN, shared by all queues, owned by Device
  bool ioctl_encoding = true;
  // The device has UBLK_F_AUTO_BUF_REG: the kernel puts each READ/WRITE
  // request's pages into this queue ring's fixed buffer table at the tag's
  // index, and the backend serves them from there (Backend::zero_copy()).
  // No buffers of our own are set up.
  bool auto_buf_reg = false;
  // The device has UBLK_F_USER_COPY (Backend::touches_data(),
  // Backend::user_copy()): the commands carry no address; unless
  // bridge_copy, there are no buffers and requests carry the char device
  // and their position on it (IoRequest::copy_fd).
  bool user_copy = false;
  // With user_copy, for a backend that serves from buffers only
  // (Device::bridged_user_copy): the tags get buffers after all, and the
  // loop copies a WRITE's data into the buffer before the backend sees it
  // and a READ's out of it after, through the char device.
  bool bridge_copy = false;
  // The device has UBLK_F_BATCH_IO: the tags are armed with one
  // PREP_IO_CMDS, new requests arrive as tag lists of one multishot
  // FETCH_IO_CMDS, and the answers of a loop pass go out in one
  // COMMIT_IO_CMDS, instead of a command per tag and per answer.
  bool batch_io = false;
  // The longest an idle queue thread watches its ring for new requests
  // before it sleeps (IdlePoll); 0: it always sleeps at once.
  std::chrono::nanoseconds idle_spin{0};
  // The device is read-only: WRITE, DISCARD and WRITE_ZEROES fail with
  // EROFS here, whatever reaches the queue. The kernel refuses them first,
  // but only with a flag of the block device that root can clear
  // (BLKROSET), and the backend's data must not depend on that.
  bool read_only = false;
  // Test-only fault injection: this tag gets no FETCH_REQ although the queue
  // still reports itself primed, which must make START_DEV time out.
  std::optional<uint16_t> unprimed_tag;
};

class QueueWorker {
 public:
  // Called on the worker thread when it exits, for whatever reason.
  using ExitHook = std::function<void(uint16_t queue_id)>;

  QueueWorker(QueueConfig config, Backend& backend, ExitHook on_exit = {});
  ~QueueWorker();
  QueueWorker(const QueueWorker&) = delete;
  QueueWorker& operator=(const QueueWorker&) = delete;

  // Spawns the thread; it sets up its ring and submits the fetches.
  Result<void> start();

  // Waits, bounded, until every tag's FETCH_REQ has been submitted (primed)
  // or setup failed. With `abort`, also ends (ECANCELED) soon after the
  // signal is triggered.
  Result<void> wait_primed(std::chrono::steady_clock::time_point deadline,
                           const AbortSignal* abort = nullptr);

  // Asks the thread to leave its loop now: it drops its ring, which makes the
  // kernel cancel whatever it still had outstanding.
  void request_stop();

  // Asks the thread to fail with EIO, `grace` from now, every request its
  // backend has not answered by then, so that a stopping device is not held
  // by a backend that stopped answering (the kernel's STOP_DEV waits for
  // every request it handed out). The backend's late answers to those
  // requests are dropped; a new request on such a tag fails at once while
  // the old one may still use the tag's buffer. failed_unanswered() counts
  // them.
  void fail_unanswered_after(std::chrono::milliseconds grace);
  uint32_t failed_unanswered() const { return failed_unanswered_.load(std::memory_order_acquire); }

  // Waits, bounded, until the thread has left its loop and will not touch
  // this object again; true if so. The thread itself is then joined, or,
  // when the kernel still holds it in its exit (its ring had I/O in flight
  // that cannot be cancelled, on a backing store that does not answer),
  // detached: lingering() says so, and the kernel reaps it once that I/O
  // ends.
  bool join(std::chrono::steady_clock::time_point deadline);
  bool lingering() const { return lingering_; }

  bool exited() const { return exited_.load(std::memory_order_acquire); }
  // Why the loop ended early, if it did; meaningful once exited().
  std::optional<Error> exit_error() const;
  // Why the thread could not mark itself an I/O flusher (PR_SET_IO_FLUSHER,
  // which needs CAP_SYS_RESOURCE), if it could not. The queue serves anyway;
  // the owner decides whether that is worth a warning. nullopt until the
  // thread has tried, which it does before it reports primed.
  std::optional<Error> io_flusher_error() const;
  uint16_t queue_id() const { return config_.queue_id; }
  // The IORING_SETUP_* flags the kernel granted the queue's ring (probed);
  // meaningful once primed.
  unsigned ring_flags() const { return ring_flags_.load(std::memory_order_acquire); }
  // What the queue has served so far; from any thread, at any time.
  StatsSnapshot stats() const { return stats_.snapshot(); }

 private:
  static void* thread_main(void* self);
  void run();
  Result<void> serve();

  QueueConfig config_;
  Backend& backend_;
  ExitHook on_exit_;
  // eventfd the control plane writes to wake the loop for commands_ (kCmd*
  // in queue_worker.cpp).
  UniqueFd wake_fd_;
  std::atomic<unsigned> commands_{0};
  std::atomic<int64_t> fail_after_ns_{0};
  std::atomic<uint32_t> failed_unanswered_{0};
  // A raw pthread: join() needs a join with a deadline, and a thread that
  // could not be joined in time must be detached, which std::thread cannot
  // do once a timed join was tried.
  pthread_t thread_{};
  bool thread_started_ = false;
  bool thread_released_ = false;  // joined or detached
  bool lingering_ = false;
  std::promise<Result<void>> primed_;
  std::future<Result<void>> primed_future_;
  std::promise<void> done_;
  std::future<void> done_future_;
  std::atomic<bool> exited_{false};
  std::optional<Error> exit_error_;
  // -1 until the thread tried, then 0 or the errno of the prctl.
  std::atomic<int> io_flusher_errno_{-1};
  std::atomic<unsigned> ring_flags_{0};
  QueueStats stats_;
};

}  // namespace ublkd
