#include "device/device.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/random.h>
#include <unistd.h>

#include <bit>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <thread>

namespace ublkd {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

namespace {

// How long a queue gets to drain after STOP_DEV before it is told to quit.
constexpr milliseconds kQueueDrainTimeout{5'000};
// How long a queue gets to quit once told to.
constexpr milliseconds kQueueQuitTimeout{2'000};
// How long, once the device is stopping, a backend may keep a request
// unanswered before it is failed: STOP_DEV waits for every request the
// kernel handed out, so a backing store that stopped answering would hold
// the stop, and with it the queues, for as long as it does not answer.
constexpr milliseconds kUnansweredGrace{3'000};
// How long the backend's sync at a clean stop may take before the stop goes
// on without it (the sync still finishes in the background).
constexpr milliseconds kSyncTimeout{10'000};
// udev may hold the new char device open for a moment after ADD_DEV.
constexpr milliseconds kCharOpenTimeout{3'000};
// How long a live device whose server has exited may take to be quiesced
// by the kernel before it is taken for stuck (normally: milliseconds).
constexpr milliseconds kDeadServerGrace{5'000};
// How long a deleted device may stay held by somebody else before it is
// reported as removed-pending rather than removed.
constexpr milliseconds kReleaseGrace{1'000};
constexpr const char* kUblksMaxPath = "/sys/module/ublk_drv/parameters/ublks_max";

std::string join_lines(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) {
    if (!out.empty()) out += "; ";
    out += s;
  }
  return out;
}

bool process_exists(pid_t pid) {
  if (pid <= 0) return false;
  return ::kill(pid, 0) == 0 || errno == EPERM;
}

// ublk_drv answers ADD_DEV with EACCES once it holds ublks_max devices,
// which on its own reads like a permission problem.
Error explain_add_refused(const Error& e) {
  std::string max;
  if (FILE* f = std::fopen(kUblksMaxPath, "re")) {
    char buf[32] = {};
    if (std::fgets(buf, sizeof(buf), f) != nullptr) max = buf;
    std::fclose(f);
    while (!max.empty() && (max.back() == '\n' || max.back() == ' ')) max.pop_back();
  }
  const size_t devices = char_device_ids().size();
  if (!max.empty() && devices >= std::strtoull(max.c_str(), nullptr, 10)) {
    return Error(e.code(), e.message() + ": the kernel's limit of ublk devices is reached (" +
                               std::to_string(devices) + " exist, ublks_max is " + max + " in " +
                               kUblksMaxPath + ")");
  }
  return e;
}

}  // namespace

Device::Device(DeviceConfig config, std::unique_ptr<Backend> backend,
               StateMachine::Listener listener, QueueExitHook on_queue_exit)
    : config_(std::move(config)),
      backend_(std::move(backend)),
      size_(backend_ ? backend_->size() : 0),
      sm_(std::move(listener)),
      on_queue_exit_(std::move(on_queue_exit)) {}

Device::Device(DeviceConfig config, BackendFactory backend_factory, StateMachine::Listener listener,
               QueueExitHook on_queue_exit)
    : config_(std::move(config)),
      backend_factory_(std::move(backend_factory)),
      sm_(std::move(listener)),
      on_queue_exit_(std::move(on_queue_exit)) {}

Result<void> Device::open_backend() {
  if (backend_) return {};
  if (state() != DeviceState::kNew) return Error(EALREADY, "device was already started once");
  if (auto b = make_backend(); !b) {
    released_.store(true, std::memory_order_release);
    (void)sm_.transition(DeviceState::kFailed, b.error().to_string());
    return b;
  }
  return {};
}

Result<void> Device::make_backend() {
  if (backend_) return {};
  Result<std::unique_ptr<Backend>> b =
      backend_factory_ ? backend_factory_() : Error(EINVAL, "no backend");
  if (!b) return b.error();
  backend_ = std::move(b).value();
  size_.store(backend_->size(), std::memory_order_release);
  if (storage_resize_hook_) backend_->watch_size(storage_resize_hook_);
  return {};
}

uint64_t Device::storage_size() const {
  if (!backend_) return size();
  return backend_->size() / config_.logical_block_size * config_.logical_block_size;
}

Result<void> Device::check_new_size(uint64_t bytes) const {
  if (state() != DeviceState::kLive || !dev_id_ || !ctrl_)
    return Error(EAGAIN, "the device is not live");
  if (!resizable()) return Error(EOPNOTSUPP, std::string(kCannotResize));
  if (bytes == 0 || bytes % config_.logical_block_size != 0) {
    return Error(EINVAL, std::to_string(bytes) + " bytes is not a whole number of " +
                             std::to_string(config_.logical_block_size) + "-byte blocks");
  }
  return {};
}

Result<void> Device::resize(uint64_t bytes) {
  if (auto r = check_new_size(bytes); !r) return r;
  if (auto r = ctrl_->update_size(*dev_id_, bytes >> 9, config_.command_timeout); !r)
    return r.error().wrap("UPDATE_SIZE");
  size_.store(bytes, std::memory_order_release);
  return {};
}

Result<void> Device::change_size(uint64_t bytes, bool force,
                                 const std::function<Result<void>(uint64_t)>& record) {
  if (auto r = check_new_size(bytes); !r) return r;
  const uint64_t from = size();
  if (bytes == from) return {};
  if (auto r = backend_->check_resize(bytes, force); !r) return r;
  if (bytes < from) {
    if (auto r = resize(bytes); !r) return r;
    // The device is smaller already; what is left undone is only kept
    // storage, which a later resize or recovery cuts.
    const std::string now = "the device is " + std::to_string(bytes) + " bytes now, but ";
    if (auto r = record(bytes); !r) return r.error().wrap(now + "its record kept the old size");
    if (auto r = backend_->resize(bytes); !r)
      return r.error().wrap(now + "its storage could not follow");
    return {};
  }
  if (auto r = backend_->resize(bytes); !r) return r.error().wrap("grow the storage");
  auto undo = [&](Error e) {
    (void)record(from);
    (void)backend_->resize(from);
    return e;
  };
  if (auto r = record(bytes); !r) return undo(r.error());
  if (auto r = resize(bytes); !r) return undo(r.error());
  return {};
}

uint64_t Device::new_identity() {
  uint64_t v = 0;
  while (v == 0) {
    // getrandom(2) of 8 bytes from an initialised pool neither blocks nor
    // comes back short; should it fail, the clock still tells two devices
    // of one boot apart.
    if (::getrandom(&v, sizeof(v), 0) != static_cast<ssize_t>(sizeof(v)))
      v = static_cast<uint64_t>(steady_clock::now().time_since_epoch().count()) ^ 0x75626c6b64ull;
  }
  return v;
}

Device::~Device() {
  // A device dropped while still attached to the kernel is stopped here so
  // nothing is left behind; the owner normally did this already.
  if (!is_terminal(state()) && state() != DeviceState::kNew) (void)stop();
}

std::string Device::block_device() const {
  return dev_id_ ? "/dev/ublkb" + std::to_string(*dev_id_) : std::string();
}

std::string Device::char_device() const {
  return dev_id_ ? "/dev/ublkc" + std::to_string(*dev_id_) : std::string();
}

Result<void> Device::start() {
  if (state() != DeviceState::kNew) return Error(EALREADY, "device was already started once");
  if (auto b = open_backend(); !b) return b;
  Result<void> r = bring_up();
  if (r) return {};
  std::vector<std::string> problems = teardown(/*graceful=*/false);
  std::string reason = r.error().to_string();
  if (!problems.empty()) reason += " (cleanup: " + join_lines(problems) + ")";
  (void)sm_.transition(DeviceState::kFailed, reason);
  return Error(r.error().code(), reason);
}

Result<void> Device::recover(std::optional<uint32_t> dev_id) {
  if (state() != DeviceState::kNew) return Error(EALREADY, "device was already started once");
  if (auto r = sm_.transition(DeviceState::kRecovering); !r) return r.error();
  bool leave_alone = false;
  Result<void> r = reattach(dev_id, leave_alone);
  if (r) return {};
  // A stale record is explained by its message; strerror(ESTALE) would
  // only confuse.
  std::string reason = r.error().code() == ESTALE ? r.error().message() : r.error().to_string();
  if (leave_alone) {
    // Not ours to stop: another process serves it, or it is not this
    // device at all.
    (void)sm_.transition(DeviceState::kFailed, reason);
    return r.error();
  }
  std::vector<std::string> problems = teardown(/*graceful=*/false);
  if (!problems.empty()) reason += " (cleanup: " + join_lines(problems) + ")";
  (void)sm_.transition(DeviceState::kFailed, reason);
  return Error(r.error().code(), reason);
}

Result<void> Device::await_release(uint32_t dev_id) {
  if (state() != DeviceState::kNew) return Error(EALREADY, "device was already started once");
  dev_id_ = dev_id;
  delete_pending_.store(true, std::memory_order_release);
  return sm_.transition(DeviceState::kRemovedPending);
}

Result<bool> Device::check_released() {
  if (released()) return true;
  if (!delete_pending() || !dev_id_) return false;
  if (!ctrl_) {
    if (auto r = open_control(); !r) return r.error();
  }
  auto held = kernel_holds(*dev_id_);
  if (!held) return held.error();
  // Deleted once, the device has no char device any more: one that exists
  // under its id is a newer device's.
  if (*held == Holding::kDeletedHeld) return false;
  note_released();
  if (state() == DeviceState::kRemovedPending) (void)sm_.transition(DeviceState::kRemoved);
  return true;
}

void Device::note_released() {
  delete_pending_.store(false, std::memory_order_release);
  released_.store(true, std::memory_order_release);
}

bool Device::owns(const uapi::CtrlDevInfo& k) const {
  return k.ublksrv_flags == config_.identity;
}

Result<Device::Holding> Device::kernel_holds(uint32_t dev_id) {
  auto info = ctrl_->get_dev_info(dev_id, config_.command_timeout);
  if (!info) {
    if (info.error().code() == ENODEV) return Holding::kReleased;
    return info.error().wrap("GET_DEV_INFO");
  }
  if (!owns(*info)) return Holding::kReleased;
  return char_device_exists(dev_id) ? Holding::kPresent : Holding::kDeletedHeld;
}

Result<uint32_t> Device::find_by_identity() {
  if (config_.identity != 0) {
    for (uint32_t id : char_device_ids()) {
      auto info = ctrl_->get_dev_info(id, config_.command_timeout);
      if (info && owns(*info)) return id;
    }
  }
  return Error(ENODEV,
               "the kernel has no device with identity " + format_identity(config_.identity));
}

std::string format_identity(uint64_t identity) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(identity));
  return buf;
}

Result<void> Device::open_control() {
  if (abort_.triggered()) return abort_error();
  if (auto u = abort_.usable(); !u) return u.error();
  auto ctrl = ControlDevice::open(config_.control_path);
  if (!ctrl) return ctrl.error();
  ctrl_.emplace(std::move(ctrl).value());
  ctrl_->set_ioctl_encoding((config_.kernel_features & uapi::kFeatCmdIoctlEncode) != 0);
  return {};
}

Result<void> Device::reattach(std::optional<uint32_t> wanted_id, bool& leave_alone) {
  if (auto r = open_control(); !r) return r;
  if (!wanted_id) {
    // The process that added the device died before it could record the id.
    auto found = find_by_identity();
    if (!found) return found.error();
    wanted_id = *found;
  }
  const uint32_t dev_id = *wanted_id;
  dev_id_ = dev_id;
  auto info = ctrl_->get_dev_info(dev_id, config_.command_timeout);
  if (!info && info.error().code() == ENODEV) {
    // Gone already (deleted by hand, or the kernel was rebooted under a
    // persistent state dir): nothing of it left to clean up either.
    dev_id_.reset();
    return Error(ENODEV, "the kernel has no device " + std::to_string(dev_id));
  }
  if (!info) return info.error();
  if (!owns(*info)) {
    // The id was given to another device after this one was deleted: its
    // size may even match, but its data is not this device's.
    dev_id_.reset();
    leave_alone = true;
    return Error(ESTALE,
                 "kernel device " + std::to_string(dev_id) + " is another device (identity " +
                     format_identity(info->ublksrv_flags) + ", this device's is " +
                     format_identity(config_.identity) + "): left alone, the record is stale");
  }
  info_ = *info;
  // Only now: a backend that cannot be opened fails a device known to be
  // this one, which is then deleted rather than left to hang its I/O.
  if (auto b = make_backend(); !b) return b.error().wrap("backend");
  if (auto r = check_recoverable(); !r) return r;
  if (auto r = check_geometry(); !r) return r;
  const auto deadline = steady_clock::now() + config_.start_timeout;
  if (auto r = start_recovery(deadline, leave_alone); !r) return r;
  if (auto r = start_queues(deadline); !r) return r;
  return go_live("END_USER_RECOVERY", "recovery", deadline, [&](milliseconds left) {
    return ctrl_->end_user_recovery(dev_id, ::getpid(), left, &abort_);
  });
}

Result<void> Device::check_recoverable() const {
  const bool recoverable = (info_.flags & uapi::kFeatUserRecovery) != 0;
  if (!recoverable && info_.state != uapi::kDevStateLive) {
    return Error(EOPNOTSUPP,
                 "the device was created without USER_RECOVERY (recovery off): nothing to "
                 "recover");
  }
  if (info_.state != uapi::kDevStateDead) return {};
  if (!char_device_exists(*dev_id_)) {
    return Error(ENODEV,
                 "the device was deleted already; the kernel releases it when its last user "
                 "closes it");
  }
  return Error(ENODEV, "the kernel device is not running (state dead): nothing to recover");
}

Result<void> Device::check_geometry() {
  if (info_.queue_depth == 0 || info_.nr_hw_queues == 0 ||
      info_.max_io_buf_bytes < config_.logical_block_size) {
    return Error(EPROTO, "GET_DEV_INFO returned an unusable geometry");
  }
  // The kernel kept the old geometry; serving it from a backend of another
  // size or block size would put blocks where the file system does not
  // expect them.
  auto params = ctrl_->get_params(*dev_id_, config_.command_timeout);
  if (!params) return params.error();
  // Storage that grew meanwhile (an image its cluster resized) is served
  // at the kernel's size, the blocks where they were; the owner may grow
  // the device after. Storage that shrank has lost blocks.
  const uint64_t want_sectors = backend_->size() >> 9;
  if (params->basic.dev_sectors > want_sectors) {
    return Error(EINVAL, "the kernel device has " + std::to_string(params->basic.dev_sectors) +
                             " sectors, the backend only " + std::to_string(want_sectors));
  }
  size_.store(params->basic.dev_sectors << 9, std::memory_order_release);
  if ((1u << params->basic.logical_bs_shift) != config_.logical_block_size) {
    return Error(EINVAL, "the kernel device has logical block size " +
                             std::to_string(1u << params->basic.logical_bs_shift) + ", the spec " +
                             std::to_string(config_.logical_block_size));
  }
  return {};
}

Result<void> Device::start_recovery(steady_clock::time_point deadline, bool& leave_alone) {
  const uint32_t dev_id = *dev_id_;
  const auto waiting_since = steady_clock::now();
  // A server that just died is still being torn down: the kernel quiesces
  // the device once its io_uring and char device are gone, and refuses
  // START_USER_RECOVERY until then.
  for (milliseconds pause{2};; pause = std::min(pause * 2, milliseconds(100))) {
    if (auto r = check_recoverable(); !r) return r;
    if (info_.state == uapi::kDevStateQuiesced && config_.earlier_recovery_cut_short &&
        (config_.kernel_features & uapi::kFeatUserRecoveryFailIo) == 0) {
      return Error(EAGAIN,
                   "an earlier recovery of this device was cut short, and this kernel (without "
                   "USER_RECOVERY_FAIL_IO) cannot safely start another: deleting it instead");
    }
    if (info_.state == uapi::kDevStateQuiesced) {
      if (config_.before_recovery_start) {
        if (auto h = config_.before_recovery_start(); !h) return h.error();
      }
      auto started = ctrl_->start_user_recovery(dev_id, config_.command_timeout);
      if (started) return {};
      if (started.error().code() != EBUSY) return started.error();
    } else if (info_.state != uapi::kDevStateLive && info_.state != uapi::kDevStateFailIo) {
      return Error(EPROTO, "the kernel device is in unknown state " + std::to_string(info_.state));
    }
    if (abort_.triggered()) return abort_error("waiting for the device to quiesce");
    if (info_.state == uapi::kDevStateLive && !process_exists(info_.ublksrv_pid) &&
        steady_clock::now() - waiting_since > kDeadServerGrace) {
      // Seen on 6.12 when a server dies just after its own recovery: the
      // device stays live with nobody serving it, and its I/O would hang
      // for good. Deleting it fails that I/O instead.
      return Error(EIO, "the kernel kept the device live after its server (pid " +
                            std::to_string(info_.ublksrv_pid) +
                            ") died instead of quiescing it; deleting it so that its I/O fails "
                            "rather than hangs");
    }
    if (steady_clock::now() + pause > deadline) {
      if (info_.state == uapi::kDevStateLive) {
        leave_alone = true;
        return Error(EBUSY, "the kernel device is live, served by pid " +
                                std::to_string(info_.ublksrv_pid) + "; left alone");
      }
      return Error(ETIMEDOUT, "START_USER_RECOVERY was refused (EBUSY) until the timeout");
    }
    std::this_thread::sleep_for(pause);
    auto info = ctrl_->get_dev_info(dev_id, config_.command_timeout);
    if (!info) return info.error();
    info_ = *info;
  }
}

Result<void> Device::go_live(std::string_view command, std::string_view phase,
                             steady_clock::time_point deadline,
                             const std::function<Result<void>(milliseconds)>& send) {
  auto left = std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now());
  if (left < milliseconds(1)) left = milliseconds(1);
  if (auto r = send(left); !r) {
    if (r.error().code() == ETIMEDOUT) {
      return Error(ETIMEDOUT, std::string(command) + " timed out after " +
                                  std::to_string(config_.start_timeout.count()) + " ms");
    }
    if (r.error().code() == ECANCELED && abort_.triggered())
      return abort_error(r.error().message());
    return r.error();
  }
  for (auto& w : workers_) {
    if (w->exited()) {
      return Error(
          EIO, "queue " + std::to_string(w->queue_id()) + " exited during " + std::string(phase));
    }
  }
  return sm_.transition(DeviceState::kLive);
}

uapi::Params Device::build_params() const {
  const BackendFeatures f = backend_->features();
  const bool read_only = this->read_only();
  const auto lbs_shift = static_cast<uint8_t>(std::countr_zero(config_.logical_block_size));
  uapi::Params p{};
  p.types = uapi::kParamTypeBasic;
  p.basic.attrs = (read_only ? uapi::kAttrReadOnly : 0u) |
                  (f.volatile_cache ? uapi::kAttrVolatileCache : 0u) |
                  (f.volatile_cache && f.fua ? uapi::kAttrFua : 0u);
  p.basic.logical_bs_shift = lbs_shift;
  p.basic.physical_bs_shift = std::max<uint8_t>(lbs_shift, 12);
  p.basic.io_min_shift = lbs_shift;
  p.basic.io_opt_shift = std::max<uint8_t>(lbs_shift, 12);
  p.basic.max_sectors = info_.max_io_buf_bytes >> 9;
  p.basic.dev_sectors = backend_->size() >> 9;
  if ((f.discard || f.write_zeroes) && !read_only) {
    p.types |= uapi::kParamTypeDiscard;
    // Ranges are capped so that a byte count fits the 32-bit request size.
    constexpr uint32_t kMaxRangeSectors = UINT32_MAX >> 9;
    p.discard.discard_granularity = std::max(config_.logical_block_size, f.discard_granularity);
    p.discard.max_discard_sectors = f.discard ? kMaxRangeSectors : 0;
    p.discard.max_write_zeroes_sectors = f.write_zeroes ? kMaxRangeSectors : 0;
    p.discard.max_discard_segments = 1;
  }
  return p;
}

void Device::abort_start(const std::string& reason) {
  {
    std::lock_guard lock(abort_mu_);
    if (abort_reason_.empty()) abort_reason_ = reason;
  }
  abort_.trigger();
}

Error Device::abort_error(const std::string& detail) const {
  std::lock_guard lock(abort_mu_);
  std::string m = "start aborted: " + abort_reason_;
  if (!detail.empty()) m += " (" + detail + ")";
  return Error(ECANCELED, std::move(m));
}

Result<UniqueFd> Device::open_char_device(steady_clock::time_point deadline) const {
  const std::string path = char_device();
  for (milliseconds pause{1};; pause = std::min(pause * 2, milliseconds(50))) {
    if (abort_.triggered()) return abort_error("opening " + path);
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (fd) return fd;
    const int err = errno;
    if ((err != ENOENT && err != EBUSY) || steady_clock::now() + pause > deadline)
      return Error(err, "open " + path);
    std::this_thread::sleep_for(pause);
  }
}

uapi::CtrlDevInfo Device::device_to_add() const {
  uapi::CtrlDevInfo want{};
  const BackendFeatures f = backend_->features();
  // The backend's own limits (a server's) narrow what the spec asks for;
  // the manager reports the queues the device got, io_notes() why.
  want.nr_hw_queues = config_.queues;
  if (f.max_queues > 0) want.nr_hw_queues = std::min<uint16_t>(want.nr_hw_queues, f.max_queues);
  want.queue_depth = config_.queue_depth;
  want.max_io_buf_bytes = config_.max_io_buf_bytes;
  if (f.max_io_bytes > 0) {
    // Whole pages (the kernel's unit for the tag buffers), and at least one
    // logical block.
    const uint32_t page = static_cast<uint32_t>(::sysconf(_SC_PAGESIZE));
    const uint32_t cap = std::max(f.max_io_bytes / page * page, config_.logical_block_size);
    want.max_io_buf_bytes = std::min(want.max_io_buf_bytes, cap);
  }
  want.dev_id = ControlDevice::kAutoDevId;
  want.ublksrv_pid = ::getpid();
  want.ublksrv_flags = config_.identity;
  // UPDATE_SIZE costs nothing unused: asked for wherever offered, so that
  // storage that grows can grow the device too.
  // SAFE_STOP_DEV likewise: it only adds TRY_STOP_DEV, for a careful `del`.
  want.flags = config_.kernel_features &
               (uapi::kFeatCmdIoctlEncode | uapi::kFeatUringCmdCompInTask | uapi::kFeatUpdateSize |
                uapi::kFeatSafeStopDev);
  // A command per many requests instead of one per request (7.0+). Not
  // for a queue of one tag: the kernel's list of ready tags cannot be that
  // short (ADD_DEV fails with EINVAL).
  const bool batch =
      config_.batch_io && want.queue_depth >= 2 && (config_.kernel_features & uapi::kFeatBatchIo);
  if (batch) want.flags |= uapi::kFeatBatchIo;
  if (config_.recovery) {
    // Without REISSUE the requests the dead server had taken fail with EIO
    // at recovery; re-sent, they succeed, which is only right where serving
    // a request twice is harmless.
    // QUIESCE (needs USER_RECOVERY) lets an upgrade answer what it holds
    // before it goes, instead of leaving it to REISSUE or to fail. Not with
    // BATCH_IO: 7.2's QUIESCE_DEV then marks the queues aborted, and every
    // request that comes before the next ublkd fails with EIO instead of
    // waiting for it; an upgrade hands such a device over as it runs.
    uint64_t bits = uapi::kFeatUserRecovery | (batch ? 0 : uapi::kFeatQuiesce);
    if (config_.reissue_safe) bits |= uapi::kFeatUserRecoveryReissue;
    want.flags |= config_.kernel_features & bits;
  }
  // Zero copy where both sides can: the backend reads and writes the
  // request's pages itself instead of a buffer the kernel copies to or from.
  // Kernels before 6.16 lack it and keep the copy.
  // With USER_COPY (6.5+) the kernel leaves the copying to the server: a
  // backend that never looks at the data then copies nothing, and one that
  // copies itself (Backend::user_copy) has the kernel copy straight to or
  // from its memory.
  if (!backend_->touches_data() || backend_->user_copy())
    want.flags |= config_.kernel_features & uapi::kFeatUserCopy;
  if (config_.zero_copy && backend_->zero_copy())
    want.flags |= config_.kernel_features & uapi::kFeatAutoBufReg;
  // bring_up() refused the device already where the kernel lacks it.
  if (!config_.partition_scan) want.flags |= uapi::kFeatNoAutoPartScan;
  return want;
}

Result<void> Device::bring_up() {
  // Between the bounded steps below the abort is only looked at; the two
  // waits that can last the whole start timeout are woken by it.
  if (auto r = open_control(); !r) return r;
  if (!config_.partition_scan && (config_.kernel_features & uapi::kFeatNoAutoPartScan) == 0) {
    return Error(EOPNOTSUPP,
                 "partition_scan is false, but this kernel reads every ublk device's partition "
                 "table: turning that off needs UBLK_F_NO_AUTO_PART_SCAN, which it lacks");
  }

  if (config_.before_add) {
    if (auto r = config_.before_add(); !r) return r;
  }
  auto added = ctrl_->add_dev(device_to_add(), config_.command_timeout);
  if (!added) {
    if (added.error().code() == EACCES) return explain_add_refused(added.error());
    return added.error();
  }
  // From here on only what the kernel accepted counts: it may have granted
  // fewer queues (capped at the CPU count) and rewritten the flags.
  info_ = *added;
  dev_id_ = info_.dev_id;
  if (auto r = sm_.transition(DeviceState::kAdded); !r) return r.error();
  if (!owns(info_)) {
    return Error(EPROTO, "the kernel did not keep the device's identity (ublksrv_flags " +
                             format_identity(info_.ublksrv_flags) +
                             "), without which a recovery could not tell it from another device");
  }
  if (info_.queue_depth == 0 || info_.nr_hw_queues == 0 ||
      info_.max_io_buf_bytes < config_.logical_block_size) {
    return Error(EPROTO, "ADD_DEV returned an unusable geometry");
  }
  if (auto r = ctrl_->set_params(*dev_id_, build_params(), config_.command_timeout); !r)
    return r.error();
  if (auto r = sm_.transition(DeviceState::kParamsSet); !r) return r.error();
  if (abort_.triggered()) return abort_error();

  const auto start_deadline = steady_clock::now() + config_.start_timeout;
  if (auto r = start_queues(start_deadline); !r) return r;
  if (auto r = sm_.transition(DeviceState::kQueuesPrimed); !r) return r.error();

  // Only now: START_DEV sleeps in the kernel until every tag has a fetch
  // outstanding, so sending it earlier could never complete.
  if (auto r = sm_.transition(DeviceState::kStartPending); !r) return r.error();
  return go_live("START_DEV", "start", start_deadline, [&](milliseconds left) {
    return ctrl_->start_dev(*dev_id_, ::getpid(), left, &abort_);
  });
}

Result<void> Device::start_queues(steady_clock::time_point start_deadline) {
  // The io commands follow the encoding of the device, as returned.
  const bool io_ioctl = (info_.flags & uapi::kFeatCmdIoctlEncode) != 0;
  auto fd = open_char_device(std::min(start_deadline, steady_clock::now() + kCharOpenTimeout));
  if (!fd) return fd.error();
  char_fd_ = std::move(fd).value();

  for (uint16_t q = 0; q < info_.nr_hw_queues; ++q) {
    QueueConfig qc;
    qc.dev_id = *dev_id_;
    qc.queue_id = q;
    qc.depth = info_.queue_depth;
    qc.buf_bytes = info_.max_io_buf_bytes;
    qc.char_fd = char_fd_.get();
    qc.ioctl_encoding = io_ioctl;
    qc.auto_buf_reg = zero_copy();
    qc.user_copy = (info_.flags & uapi::kFeatUserCopy) != 0;
    qc.batch_io = batch_io();
    qc.bridge_copy = bridged_user_copy();
    qc.idle_spin = config_.idle_spin;
    qc.read_only = read_only();
    if (config_.unprimed_tag && config_.unprimed_tag->first == q)
      qc.unprimed_tag = config_.unprimed_tag->second;
    auto hook = [this](uint16_t) {
      if (on_queue_exit_) on_queue_exit_();
    };
    workers_.push_back(std::make_unique<QueueWorker>(qc, *backend_, hook));
    if (auto r = workers_.back()->start(); !r) return r.error();
  }
  for (auto& w : workers_) {
    if (auto r = w->wait_primed(start_deadline, &abort_); !r) {
      if (r.error().code() == ECANCELED && abort_.triggered())
        return abort_error("queue " + std::to_string(w->queue_id()) + " was not primed yet");
      return r.error().wrap("queue " + std::to_string(w->queue_id()));
    }
  }
  // Every queue thread tried the same prctl with the same credentials; one
  // failure tells the whole story.
  for (auto& w : workers_) {
    if (auto e = w->io_flusher_error()) {
      io_flusher_error_ = e;
      break;
    }
  }
  queue_ring_flags_ = workers_.front()->ring_flags();
  return {};
}

namespace {

// The backend's sync on a thread of its own, waited for until `timeout`: a
// backing store that stopped answering must not hold the stop for ever. A
// sync that does not finish in time keeps the backend (and so its file)
// until it does.
Result<void> sync_bounded(std::shared_ptr<Backend> backend, milliseconds timeout) {
  auto done = std::make_shared<std::promise<Result<void>>>();
  auto result = done->get_future();
  try {
    std::thread([backend = std::move(backend), done] {
      done->set_value(backend->sync());
    }).detach();
  } catch (const std::system_error& e) {
    return Error(e.code().value(), "start a thread for the sync");
  }
  if (result.wait_for(timeout) != std::future_status::ready) {
    return Error(ETIMEDOUT, "sync did not finish within " + std::to_string(timeout.count()) +
                                " ms (the backing store does not answer; the sync goes on in "
                                "the background)");
  }
  return result.get();
}

}  // namespace

void Device::stop_queues(bool graceful, std::vector<std::string>& problems) {
  if (graceful) {
    const auto deadline = steady_clock::now() + kQueueDrainTimeout;
    for (auto& w : workers_) (void)w->join(deadline);
  }
  for (auto& w : workers_) w->request_stop();
  const auto deadline = steady_clock::now() + kQueueQuitTimeout;
  uint32_t unanswered = 0;
  std::vector<std::unique_ptr<QueueWorker>> stuck;
  for (auto& w : workers_) {
    const bool exited = w->join(deadline);
    // After the join: a worker may still fail requests while it quits.
    unanswered += w->failed_unanswered();
    if (!exited) {
      problems.push_back("queue " + std::to_string(w->queue_id()) + " did not exit");
      stuck.push_back(std::move(w));
    } else if (auto e = w->exit_error(); e && graceful) {
      problems.push_back("queue " + std::to_string(w->queue_id()) + ": " + e->to_string());
    }
  }
  if (!stuck.empty()) {
    // They still use their worker objects, the backend and the char fd (by
    // number): all of it goes with them, freed by a thread that waits for
    // them. Should no thread start, it is kept for good rather than freed
    // under them.
    struct Parked {
      std::vector<std::unique_ptr<QueueWorker>> workers;
      std::shared_ptr<Backend> backend;
      UniqueFd char_fd;
    };
    auto* parked = new Parked{std::move(stuck), backend_, std::move(char_fd_)};
    try {
      std::thread([parked] { delete parked; }).detach();
    } catch (const std::system_error&) {
    }
  }
  if (unanswered > 0) {
    problems.push_back("the backend left " + std::to_string(unanswered) +
                       " request(s) unanswered for " + std::to_string(kUnansweredGrace.count()) +
                       " ms while the device stopped; they were failed with EIO");
  }
  workers_.clear();
}

std::vector<std::string> Device::teardown(bool graceful, bool stopped) {
  std::vector<std::string> problems;
  for (auto& w : workers_) w->fail_unanswered_after(kUnansweredGrace);
  if (dev_id_ && ctrl_ && !stopped) {
    // STOP_DEV removes the disk and hands every outstanding fetch back with
    // UBLK_IO_RES_ABORT, which is what lets the queue threads finish.
    // ENODEV: the kernel has no such device any more; nothing to stop.
    if (auto r = ctrl_->stop_dev(*dev_id_, config_.command_timeout);
        !r && r.error().code() != ENODEV)
      problems.push_back(r.error().to_string());
  }
  stop_queues(graceful, problems);
  if (graceful && backend_ && !config_.skip_sync_on_stop) {
    if (auto r = sync_bounded(backend_, kSyncTimeout); !r)
      problems.push_back("backend: " + r.error().to_string());
  }
  char_fd_.reset();
  if (dev_id_ && ctrl_) {
    if (auto problem = delete_device()) problems.push_back(*problem);
  } else if (!dev_id_) {
    released_.store(true, std::memory_order_release);
  }
  if (!problems.empty()) cleanup_failed_.store(true, std::memory_order_release);
  return problems;
}

std::optional<std::string> Device::delete_device() {
  const uint32_t id = *dev_id_;
  // Every fd, mapping and registered file of ours is gone by now: the
  // kernel releases the device at once unless somebody else still has
  // /dev/ublkbN open (a mount, a process). DEL_DEV_ASYNC does not wait for
  // that; plain DEL_DEV (before 6.9) does, and deletes all the same when
  // the wait is cut short.
  auto r = ctrl_->del_dev_async(id, config_.command_timeout);
  if (!r && r.error().code() == EOPNOTSUPP) r = ctrl_->del_dev(id, kReleaseGrace);
  // What the kernel holds afterwards is asked below, whatever DEL_DEV said,
  // except for an error that says it did not get to deleting at all.
  if (!r && r.error().code() != ETIMEDOUT && r.error().code() != EINTR &&
      r.error().code() != ENODEV)
    return r.error().to_string();
  // Holders such as udev's probe let go within moments; a mount does not.
  const auto deadline = steady_clock::now() + kReleaseGrace;
  for (milliseconds pause{1};; pause = std::min(pause * 2, milliseconds(100))) {
    auto held = kernel_holds(id);
    if (!held) return held.error().to_string();
    switch (*held) {
      case Holding::kReleased:
        note_released();
        return std::nullopt;
      case Holding::kPresent:
        return r ? "DEL_DEV: the kernel still has /dev/ublkc" + std::to_string(id)
                 : r.error().to_string();
      case Holding::kDeletedHeld:
        break;
    }
    if (steady_clock::now() + pause > deadline) {
      delete_pending_.store(true, std::memory_order_release);
      return std::nullopt;
    }
    std::this_thread::sleep_for(pause);
  }
}

Result<void> Device::stop() {
  const DeviceState s = state();
  if (is_terminal(s)) return {};
  if (s == DeviceState::kNew) return sm_.transition(DeviceState::kRemoved);
  if (auto r = sm_.transition(DeviceState::kStopping); !r) return r.error();
  std::vector<std::string> problems = teardown(/*graceful=*/true);
  if (problems.empty())
    return sm_.transition(delete_pending() ? DeviceState::kRemovedPending : DeviceState::kRemoved);
  const std::string reason = "stop: " + join_lines(problems);
  (void)sm_.transition(DeviceState::kFailed, reason);
  return Error(EIO, reason);
}

Result<void> Device::stop_if_unused() {
  if (state() != DeviceState::kLive || !dev_id_ || !ctrl_)
    return Error(EAGAIN, "the device is not live");
  if (!safe_stop()) return Error(EOPNOTSUPP, "the kernel cannot stop a device only if unused");
  if (auto r = ctrl_->try_stop_dev(*dev_id_, config_.command_timeout); !r) return r.error();
  if (auto r = sm_.transition(DeviceState::kStopping); !r) return r.error();
  std::vector<std::string> problems = teardown(/*graceful=*/true, /*stopped=*/true);
  if (problems.empty())
    return sm_.transition(delete_pending() ? DeviceState::kRemovedPending : DeviceState::kRemoved);
  const std::string reason = "stop: " + join_lines(problems);
  (void)sm_.transition(DeviceState::kFailed, reason);
  return Error(EIO, reason);
}

Result<Device::Quiesced> Device::quiesce(steady_clock::time_point deadline) {
  if (state() != DeviceState::kLive || !dev_id_ || !ctrl_)
    return Error(EAGAIN, "the device is not live");
  if (!can_quiesce()) return Error(EOPNOTSUPP, "the kernel cannot quiesce a live device");
  const auto wait = std::max(
      std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now()), milliseconds(1));
  if (auto r = ctrl_->quiesce_dev(*dev_id_, wait, config_.command_timeout); !r)
    return r.error().wrap("QUIESCE_DEV");
  Quiesced q;
  q.held = in_flight();
  // Nothing new arrives now; the backends finish what they hold.
  while (in_flight() > 0 && steady_clock::now() < deadline)
    std::this_thread::sleep_for(milliseconds(1));
  // A thread leaving its loop sends the commits it queued first.
  for (auto& w : workers_) w->request_stop();
  const auto join_by = std::max(deadline, steady_clock::now() + milliseconds(500));
  for (auto& w : workers_) (void)w->join(join_by);
  for (const auto& w : workers_) q.served += w->stats().answered;
  q.left = in_flight();
  return q;
}

void Device::fail(const std::string& reason) {
  if (is_terminal(state())) return;
  std::vector<std::string> problems = teardown(/*graceful=*/false);
  std::string full = reason;
  if (!problems.empty()) full += " (cleanup: " + join_lines(problems) + ")";
  (void)sm_.transition(DeviceState::kFailed, full);
}

std::vector<StatsSnapshot> Device::queue_stats() const {
  std::vector<StatsSnapshot> out;
  out.reserve(workers_.size());
  for (const auto& w : workers_) out.push_back(w->stats());
  return out;
}

uint64_t Device::in_flight() const {
  uint64_t n = 0;
  for (const auto& w : workers_) n += w->stats().in_flight();
  return n;
}

bool Device::queues_healthy() const {
  for (const auto& w : workers_)
    if (w->exited()) return false;
  return true;
}

std::string Device::queue_failure() const {
  for (const auto& w : workers_) {
    if (!w->exited()) continue;
    auto e = w->exit_error();
    return "queue " + std::to_string(w->queue_id()) + " exited" +
           (e ? ": " + e->to_string() : std::string(" unexpectedly"));
  }
  return {};
}

}  // namespace ublkd
