// One ublk device from ADD_DEV to DEL_DEV: drives the state machine, owns
// the control device, the char device fd, the queue workers and the backend.
// All methods except the observers and abort_start() are called from one
// control thread.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "base/abort_signal.h"
#include "base/error.h"
#include "base/unique_fd.h"
#include "ctrl/control_device.h"
#include "device/device_shape.h"
#include "device/state_machine.h"
#include "queue/queue_worker.h"
#include "uapi/ublk.h"

namespace ublkd {

struct DeviceConfig : DeviceShape {
  std::string name;
  // Largest request the kernel may send; also each tag's buffer size.
  uint32_t max_io_buf_bytes = 512 * 1024;
  // Kernel feature bits from GET_FEATURES (0 if the kernel lacks it).
  uint64_t kernel_features = 0;
  // Ask for zero copy (UBLK_F_AUTO_BUF_REG) when the kernel offers it and
  // the backend can serve from the request's own pages. Off unless asked
  // for: 7.2's io_uring logs a UBSAN report on the first registration
  // (docs/configuration.md).
  bool zero_copy = false;
  // Serving one of the backend's requests twice is harmless: with recovery,
  // the kernel re-sends the requests a dead server had taken instead of
  // failing them (UBLK_F_USER_RECOVERY_REISSUE).
  bool reissue_safe = false;
  // Who the device is: a random nonzero number (Device::new_identity())
  // that ADD_DEV stores in the kernel's dev_info (ublksrv_flags, which the
  // driver keeps for the server's own use and hands back with
  // GET_DEV_INFO). Ids are reused once the kernel releases a device, so
  // recover() and the release checks act only on a kernel device that
  // carries this number. 0: a device created before identities existed,
  // recognised by an ublksrv_flags of 0.
  uint64_t identity = 0;
  // QueueConfig::idle_spin of every queue.
  std::chrono::nanoseconds idle_spin{0};
  // Ask for UBLK_F_BATCH_IO where the kernel offers it (and not
  // UBLK_F_QUIESCE then). A recovered device keeps what it was added with.
  bool batch_io = false;
  // START_DEV, and the wait for primed queues before it.
  std::chrono::milliseconds start_timeout{10'000};
  // Every other control command, and each step of the shutdown.
  std::chrono::milliseconds command_timeout{5'000};
  std::string control_path = ControlDevice::kDefaultPath;
  // recover(): called just before START_USER_RECOVERY, whose effect a later
  // process may need to know of (see Device::recover); an error stops the
  // recovery there.
  std::function<Result<void>()> before_recovery_start;
  // start(): called just before ADD_DEV, to record the identity durably
  // before the kernel can hold the device; an error fails the start there.
  std::function<Result<void>()> before_add;
  // recover(): an earlier recovery of this device was cut short after its
  // START_USER_RECOVERY. Kernels before the recovery rework of 6.13 (they
  // lack UBLK_F_USER_RECOVERY_FAIL_IO) may dereference a NULL queue daemon
  // if START_USER_RECOVERY comes again then; on those the device is deleted
  // instead of recovered.
  bool earlier_recovery_cut_short = false;
  // Test-only fault injection: (queue, tag) that never gets a FETCH_REQ.
  std::optional<std::pair<uint16_t, uint16_t>> unprimed_tag;
  // Test-only fault injection: a clean stop leaves out the backend's sync,
  // so a test can show that it notices the writes this loses.
  bool skip_sync_on_stop = false;
};

class Device {
 public:
  // A queue thread ended (on its own, or because the device stopped). Runs on
  // that queue's thread; the owner should hop to its control thread and
  // check queues_healthy().
  using QueueExitHook = std::function<void()>;

  // Opening a backend may block (a file on slow or remote storage), so an
  // owner with a responsive thread to keep passes a factory, which runs on
  // the control thread in open_backend() or start().
  using BackendFactory = std::function<Result<std::unique_ptr<Backend>>()>;

  Device(DeviceConfig config, std::unique_ptr<Backend> backend,
         StateMachine::Listener listener = {}, QueueExitHook on_queue_exit = {});
  Device(DeviceConfig config, BackendFactory backend_factory, StateMachine::Listener listener = {},
         QueueExitHook on_queue_exit = {});
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  // Runs the factory if there is no backend yet; on failure the device ends
  // in failed with the backend's error (it never reached the kernel).
  Result<void> open_backend();

  // Called, from any thread, when the backend's storage changes size (see
  // Backend::watch_size); set before the backend is opened.
  void on_storage_resize(std::function<void()> hook) { storage_resize_hook_ = std::move(hook); }
  // The storage's size now, rounded down to the logical block size; the
  // device's size() until the backend is open. Safe from any thread.
  uint64_t storage_size() const;
  // Whether the kernel lets this device's size change while it is live
  // (UBLK_F_UPDATE_SIZE, 6.16+); meaningful once ADD_DEV is done.
  bool resizable() const { return (info_.flags & uapi::kFeatUpdateSize) != 0; }
  // Why not, where the kernel lacks it.
  static constexpr std::string_view kCannotResize =
      "the kernel cannot change a live device's size (UBLK_F_UPDATE_SIZE, Linux 6.16 and later)";
  // live: the disk's capacity becomes `bytes` (UPDATE_SIZE), a multiple of
  // the logical block size. EOPNOTSUPP without resizable(). One bounded
  // control command; not concurrently with the other operations.
  Result<void> resize(uint64_t bytes);
  // Why the device cannot become `bytes` long now, if it cannot: not live,
  // no UPDATE_SIZE, not whole blocks.
  Result<void> check_new_size(uint64_t bytes) const;
  // live: the device and its storage become `bytes` long, on request.
  // Changes nothing and says why when the kernel (EOPNOTSUPP) or the
  // backend (Backend::check_resize: EOPNOTSUPP, EROFS, ENOTEMPTY unless
  // `force`, EINVAL) cannot. The steps keep the kernel's size at most the
  // recorded one, and that at most the storage's, so a crash between them
  // leaves a device a recovery can serve: a grow extends the storage, then
  // calls `record(bytes)` (which stores the size a recovery will read),
  // then UPDATE_SIZE; a shrink goes the other way round. A grow whose
  // UPDATE_SIZE fails is undone. Not concurrently with other operations.
  Result<void> change_size(uint64_t bytes, bool force,
                           const std::function<Result<void>(uint64_t)>& record);

  // new -> added -> params-set -> queues-primed -> start-pending -> live.
  // On any error the device is stopped and deleted again, ends in failed,
  // and the error says which step failed.
  Result<void> start();

  // new -> recovering -> live: takes over device `dev_id`, which a server
  // that has died left quiesced (UBLK_F_USER_RECOVERY): checks that the
  // kernel device carries this device's identity, opens the backend, waits
  // (bounded by the start timeout) for the kernel to finish quiescing it,
  // checks that its size matches the backend, START_USER_RECOVERY, primes
  // every queue and END_USER_RECOVERY. The queued I/O then flows again, to
  // this process. Without `dev_id` (the process that added the device died
  // before it could record the id) the device is looked for by its
  // identity. On failure the device is stopped and deleted (its I/O fails)
  // and ends in failed; except that a kernel device with another identity
  // (ESTALE) or one that some live process still serves (EBUSY) is left
  // alone, and released() stays false. ENODEV: the kernel has no such
  // device; released() is then true.
  Result<void> recover(std::optional<uint32_t> dev_id);

  // new -> removed-pending: device `dev_id` was deleted by an earlier
  // process and is still held by its users; check_released() tells when
  // the kernel lets go of it.
  Result<void> await_release(uint32_t dev_id);

  // For a device the kernel deleted but still holds (delete_pending()):
  // asks it whether the id is free now (or went to another device). If so,
  // released() becomes true and removed-pending becomes removed. One
  // bounded control command.
  Result<bool> check_released();

  // A random nonzero identity for a new device (DeviceConfig::identity).
  static uint64_t new_identity();

  // live -> stopping -> removed: STOP_DEV, queue threads finish, fds and
  // mappings released, DEL_DEV. Every step bounded; a step that fails ends
  // the device in failed with the reason, but the later steps still run.
  Result<void> stop();
  // Whether the kernel can stop this device only while nobody has it open
  // (UBLK_F_SAFE_STOP_DEV granted at ADD_DEV); meaningful once added.
  bool safe_stop() const { return (info_.flags & uapi::kFeatSafeStopDev) != 0; }
  // stop(), but only while nobody has the disk open, which the kernel
  // decides (TRY_STOP_DEV): EBUSY, and the device stays live and
  // untouched, while somebody does. Needs safe_stop().
  Result<void> stop_if_unused();

  // Whether the kernel can quiesce this device while it runs
  // (UBLK_F_QUIESCE, granted at ADD_DEV); meaningful once added.
  bool can_quiesce() const { return (info_.flags & uapi::kFeatQuiesce) != 0; }
  struct Quiesced {
    uint64_t held = 0;    // in flight when the kernel stopped handing requests out
    uint64_t left = 0;    // still unanswered when the queues stopped
    uint64_t served = 0;  // answered since the queues started
  };
  // live, as this process hands the device over (`upgrade`) and exits:
  // QUIESCE_DEV, so the kernel hands out no more requests (they wait in it
  // for the next server), then every request the queues hold is answered
  // and its commit sent, and the queue threads end; all by `deadline`. The
  // device is not served afterwards; once the process is gone the kernel
  // keeps it quiesced, and the next server gets none of the requests
  // answered here again. Needs can_quiesce().
  Result<Quiesced> quiesce(std::chrono::steady_clock::time_point deadline);

  // Tears a device down after a queue died under it; ends in failed.
  void fail(const std::string& reason);

  // Thread-safe, never blocks: makes a start() under way give up promptly.
  // The waits for primed queues and for START_DEV end at once, the device is
  // torn down the usual way (START_DEV cancelled, STOP_DEV, queues joined,
  // DEL_DEV; every step bounded) and ends in failed with "start aborted:
  // <reason>", and start() returns ECANCELED. A start() not yet begun fails
  // the same way before it reaches the kernel. No effect once the device is
  // live; a START_DEV the kernel completed before the abort counts.
  void abort_start(const std::string& reason);

  // True once tearing the device down (after a failed start, a dead queue,
  // or in stop()) met a problem: a step failed or timed out, so the device
  // may linger in the kernel. Safe from any thread.
  bool cleanup_failed() const { return cleanup_failed_.load(std::memory_order_acquire); }
  // True once the kernel holds nothing of the device: it released the
  // device after DEL_DEV (its id is unknown to it or went to another
  // device), or the device never got as far as ADD_DEV. What was kept for a
  // later recovery can be dropped then. Safe from any thread.
  bool released() const { return released_.load(std::memory_order_acquire); }
  // True while the device is deleted but the kernel still holds its id,
  // because somebody (a mount, a process) has /dev/ublkbN open; ends when
  // check_released() finds it released. Safe from any thread.
  bool delete_pending() const { return delete_pending_.load(std::memory_order_acquire); }

  // What each queue has served since the device's queues started (in this
  // process); empty without queues. From the control thread, between
  // operations (start and stop replace the queues).
  std::vector<StatsSnapshot> queue_stats() const;
  // Requests the queues hold now (received, not yet answered); same rules.
  uint64_t in_flight() const;

  // False once a queue thread of a live device has exited.
  bool queues_healthy() const;
  // The first dead queue's story, for the log.
  std::string queue_failure() const;
  // Set by a start() that went live although its queue threads could not be
  // marked I/O flushers (see QueueWorker::io_flusher_error): the device
  // works, but writeback through it under memory pressure may deadlock.
  // Meaningful once start() has returned.
  const std::optional<Error>& io_flusher_error() const { return io_flusher_error_; }
  // The IORING_SETUP_* flags of the queue rings, as the kernel granted them
  // (every queue probes the same kernel). Meaningful once start() returned.
  unsigned queue_ring_flags() const { return queue_ring_flags_; }
  // The kernel granted zero copy (UBLK_F_AUTO_BUF_REG); meaningful once
  // ADD_DEV is done.
  bool zero_copy() const { return (info_.flags & uapi::kFeatAutoBufReg) != 0; }
  bool batch_io() const { return (info_.flags & uapi::kFeatBatchIo) != 0; }
  // The kernel copies nothing itself (UBLK_F_USER_COPY), yet the backend
  // serves from buffers only: a device added for a backend that copies
  // through the char device and recovered with one that cannot (a file
  // that was on tmpfs then and is not now). Its queue threads copy between
  // each request and a buffer of their own (QueueConfig::bridge_copy).
  bool bridged_user_copy() const {
    return (info_.flags & uapi::kFeatUserCopy) != 0 && backend_->touches_data() &&
           !backend_->user_copy();
  }
  // The kernel lends each request's pages (zero copy, as when the device
  // was added), and the backend cannot serve from them (a file that was on
  // disk then and is in memory now): its reads and writes fail with EINVAL.
  // The kernel has no way to copy for it under zero copy.
  bool zero_copy_unserved() const {
    return zero_copy() && backend_->touches_data() && !backend_->zero_copy();
  }

  DeviceState state() const { return sm_.state(); }
  std::string failure_reason() const { return sm_.failure_reason(); }
  const DeviceConfig& config() const { return config_; }
  const std::string& name() const { return config_.name; }
  Backend& backend() { return *backend_; }
  // Asked for by the spec, or forced by storage that refuses writes.
  bool read_only() const { return config_.read_only || backend_->features().read_only; }
  // The device's size in bytes; 0 until the backend is open. Safe from any
  // thread.
  uint64_t size() const { return size_.load(std::memory_order_acquire); }
  std::optional<uint32_t> dev_id() const { return dev_id_; }
  // The kernel's view after ADD_DEV (granted queues, depth, flags).
  const uapi::CtrlDevInfo& kernel_info() const { return info_; }
  std::string block_device() const;
  std::string char_device() const;

 private:
  // What the kernel has under a device id this device had.
  enum class Holding {
    kReleased,     // nothing, or a device with another identity
    kDeletedHeld,  // this device, deleted, its id held by its users
    kPresent,      // this device, not deleted (its char device exists)
  };

  Result<void> bring_up();
  // What ADD_DEV asks for: the spec narrowed by the backend's limits, the
  // features both the kernel and the backend can use.
  uapi::CtrlDevInfo device_to_add() const;
  // Runs the backend factory if there is no backend yet.
  Result<void> make_backend();
  // Opens the control device (after checking the abort signal).
  Result<void> open_control();
  Result<void> reattach(std::optional<uint32_t> dev_id, bool& leave_alone);
  // recover(): whether the kernel's device (info_) can be recovered at all.
  Result<void> check_recoverable() const;
  // recover(): the kernel's geometry of the device (info_, GET_PARAMS) is
  // the one the backend and spec describe.
  Result<void> check_geometry();
  // recover(): waits, until `deadline`, for the kernel to quiesce the device
  // and sends START_USER_RECOVERY; refuses what cannot be recovered.
  Result<void> start_recovery(std::chrono::steady_clock::time_point deadline, bool& leave_alone);
  // Whether the kernel's dev_info is this device's (DeviceConfig::identity).
  bool owns(const uapi::CtrlDevInfo& info) const;
  Result<Holding> kernel_holds(uint32_t dev_id);
  // The id of the kernel device carrying this device's identity.
  Result<uint32_t> find_by_identity();
  // DEL_DEV, then a short wait for the kernel to release the device; ends
  // with released() or delete_pending() set, or returns the problem.
  std::optional<std::string> delete_device();
  void note_released();
  // Opens the char device and starts one primed queue worker per queue of
  // info_, by `deadline`.
  Result<void> start_queues(std::chrono::steady_clock::time_point deadline);
  // Sends START_DEV or END_USER_RECOVERY (`send`), which the kernel answers
  // once every tag has a fetch outstanding, within `deadline` and the
  // abort; then checks that no queue died meanwhile and goes live.
  Result<void> go_live(std::string_view command, std::string_view phase,
                       std::chrono::steady_clock::time_point deadline,
                       const std::function<Result<void>(std::chrono::milliseconds)>& send);
  // Stops and deletes whatever bring_up() or the running device left, in the
  // order the kernel needs; returns the problems met on the way.
  // `stopped`: the kernel stopped the disk already (TRY_STOP_DEV).
  std::vector<std::string> teardown(bool graceful, bool stopped = false);
  // teardown(): the queue threads end, each within its deadline; one that
  // cannot is handed to a thread of its own that waits for it.
  void stop_queues(bool graceful, std::vector<std::string>& problems);
  uapi::Params build_params() const;
  Result<UniqueFd> open_char_device(std::chrono::steady_clock::time_point deadline) const;
  // The error a start ends with once aborted; `detail` names the wait it cut.
  Error abort_error(const std::string& detail = {}) const;

  DeviceConfig config_;
  BackendFactory backend_factory_;
  // Shared with a sync that outlives its deadline (teardown), which keeps
  // the backend until the backing store answers.
  std::shared_ptr<Backend> backend_;
  std::atomic<uint64_t> size_{0};
  std::function<void()> storage_resize_hook_;
  StateMachine sm_;
  QueueExitHook on_queue_exit_;
  std::optional<ControlDevice> ctrl_;
  std::optional<uint32_t> dev_id_;
  uapi::CtrlDevInfo info_{};
  UniqueFd char_fd_;
  std::vector<std::unique_ptr<QueueWorker>> workers_;
  std::optional<Error> io_flusher_error_;
  unsigned queue_ring_flags_ = 0;
  AbortSignal abort_;
  mutable std::mutex abort_mu_;  // guards abort_reason_
  std::string abort_reason_;
  std::atomic<bool> cleanup_failed_{false};
  std::atomic<bool> released_{false};
  std::atomic<bool> delete_pending_{false};
};

// An identity as 16 hex digits, for logs and records.
std::string format_identity(uint64_t identity);

}  // namespace ublkd
