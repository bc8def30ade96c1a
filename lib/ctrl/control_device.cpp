#include "ctrl/control_device.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>

namespace ublkd {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

namespace {

// How long to wait for a cancelled command to come back before giving up on
// it for good.
constexpr milliseconds kCancelGrace{2000};
// The kernel-internal ENOTSUPP, which some ublk_drv versions let through.
constexpr int kENOTSUPP = 524;
constexpr const char* kCharClassDir = "/sys/class/ublk-char";

}  // namespace

std::string ctrl_op_name(uint8_t op) {
  switch (op) {
    case uapi::kCmdGetQueueAffinity:
      return "GET_QUEUE_AFFINITY";
    case uapi::kCmdGetDevInfo:
      return "GET_DEV_INFO";
    case uapi::kCmdAddDev:
      return "ADD_DEV";
    case uapi::kCmdDelDev:
      return "DEL_DEV";
    case uapi::kCmdStartDev:
      return "START_DEV";
    case uapi::kCmdStopDev:
      return "STOP_DEV";
    case uapi::kCmdSetParams:
      return "SET_PARAMS";
    case uapi::kCmdGetParams:
      return "GET_PARAMS";
    case uapi::kCmdStartUserRecovery:
      return "START_USER_RECOVERY";
    case uapi::kCmdEndUserRecovery:
      return "END_USER_RECOVERY";
    case uapi::kCmdGetDevInfo2:
      return "GET_DEV_INFO2";
    case uapi::kCmdGetFeatures:
      return "GET_FEATURES";
    case uapi::kCmdDelDevAsync:
      return "DEL_DEV_ASYNC";
    default:
      return "CMD_" + std::to_string(op);
  }
}

Result<ControlDevice> ControlDevice::open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) return Error(ENOENT, "open " + path + " (is the ublk_drv module loaded?)");
    return errno_error("open " + path);
  }
  // Control commands carry an 80-byte payload, hence SQE128. Few entries: a
  // command plus a possible cancel are all that is ever in flight.
  auto ring = Ring::create(8, IORING_SETUP_SQE128);
  if (!ring) return ring.error().wrap("control ring");
  return ControlDevice(std::move(fd), std::move(ring).value());
}

uint32_t ControlDevice::encode(uint8_t op) const {
  // Commands newer than 6.1 exist only in the ioctl encoding.
  if (ioctl_encode_ || op >= uapi::kCmdGetFeatures) return uapi::ctrl_op_ioctl(op);
  return op;
}

Result<int> ControlDevice::run(uint8_t op, uint32_t dev_id, void* buf, uint16_t len, uint64_t data0,
                               milliseconds timeout, const AbortSignal* abort) {
  const std::string what = ctrl_op_name(op);
  uint64_t wake_id = 0;
  if (abort != nullptr) {
    if (abort->triggered()) return Error(ECANCELED, what + " aborted before it was sent");
    if (auto u = abort->usable(); !u) return u.error().wrap(what);
    // The abort signal's eventfd is polled on this same ring, so the one
    // wait below ends at whichever comes first: the command, the deadline
    // or the abort.
    io_uring_sqe* p = ring_.get_sqe();
    if (p == nullptr) return Error(EBUSY, what + ": control ring full");
    io_uring_prep_poll_add(p, abort->fd(), POLLIN);
    wake_id = next_user_data_++;
    p->user_data = wake_id;
  }
  io_uring_sqe* sqe = ring_.get_sqe();
  if (sqe == nullptr) return Error(EBUSY, what + ": control ring full");

  uapi::CtrlCmd cmd{};
  cmd.dev_id = dev_id;
  cmd.queue_id = UINT16_MAX;
  cmd.len = len;
  cmd.addr = reinterpret_cast<uintptr_t>(buf);
  cmd.data[0] = data0;
  prep_uring_cmd(sqe, fd_.get(), encode(op), cmd);
  // The driver may sleep inside a command (START_DEV until every fetch is in,
  // DEL_DEV until the last reference drops). IOSQE_ASYNC makes io_uring run
  // it on a worker thread, so io_uring_enter itself never blocks and our
  // deadline below always holds.
  sqe->flags |= IOSQE_ASYNC;
  const uint64_t id = next_user_data_++;
  sqe->user_data = id;
  if (auto r = ring_.submit_all(); !r) return r.error().wrap(what);

  auto r = ring_.wait_for(id, steady_clock::now() + timeout, wake_id);
  const bool aborted = !r && r.error().code() == ECANCELED;
  if (wake_id != 0 && !aborted) {
    // Take the abort poll out so it does not outlive the command; its
    // completion and the removal's are dropped by later waits as stale. If
    // even this fails, a later trigger only adds one more stale completion.
    if (io_uring_sqe* d = ring_.get_sqe(); d != nullptr) {
      io_uring_prep_poll_remove(d, wake_id);
      d->user_data = 0;
      (void)ring_.submit_all();
    }
  }
  if (r) {
    if (*r < 0) return Error(*r, what);
    return *r;
  }
  if (!aborted && r.error().code() != ETIME) return r.error().wrap(what);

  // Given up on (deadline or abort): cancel the command. Until it is back,
  // the kernel may still write its buffer (always a heap block of the
  // caller's, see callers), so on ETIMEDOUT callers leak that block rather
  // than free it. ECANCELED only reaches commands without a buffer.
  const int code = aborted ? ECANCELED : ETIMEDOUT;
  const std::string gave_up =
      aborted ? what + " aborted"
              : what + " timed out after " + std::to_string(timeout.count()) + " ms";
  io_uring_sqe* c = ring_.get_sqe();
  if (c == nullptr) return Error(code, gave_up + " (no room to cancel)");
  io_uring_prep_cancel64(c, id, 0);
  c->user_data = 0;
  if (auto s = ring_.submit_all(); !s)
    return Error(code, gave_up + " and could not be cancelled (" + s.error().to_string() + ")");
  auto back = ring_.wait_for(id, steady_clock::now() + kCancelGrace);
  if (!back) return Error(code, gave_up + " and could not be cancelled");
  // A command that finished just as it was cancelled did happen: report
  // what the kernel did, not the race.
  if (*back < 0) return Error(code, gave_up);
  return *back;
}

Result<uint64_t> ControlDevice::probe_features(milliseconds timeout) {
  // Heap-held so a command that outlives its deadline writes to memory that
  // is still ours (it is leaked in that case).
  auto features = std::make_unique<uint64_t>(0);
  ioctl_encode_ = true;
  auto r = run(uapi::kCmdGetFeatures, kAutoDevId, features.get(), sizeof(uint64_t), 0, timeout);
  if (!r) {
    if (r.error().code() == ETIMEDOUT) {
      (void)features.release();
      return r.error();
    }
    // Kernels before 6.5 know neither GET_FEATURES nor the ioctl encoding.
    if (r.error().code() == EINVAL || r.error().code() == EOPNOTSUPP ||
        r.error().code() == ENOTTY) {
      ioctl_encode_ = false;
      return uint64_t{0};
    }
    return r.error();
  }
  ioctl_encode_ = (*features & uapi::kFeatCmdIoctlEncode) != 0;
  return *features;
}

Result<uapi::CtrlDevInfo> ControlDevice::add_dev(const uapi::CtrlDevInfo& wanted,
                                                 milliseconds timeout) {
  auto info = std::make_unique<uapi::CtrlDevInfo>(wanted);
  auto r = run(uapi::kCmdAddDev, wanted.dev_id, info.get(), sizeof(*info), 0, timeout);
  if (!r) {
    if (r.error().code() == ETIMEDOUT) (void)info.release();
    return r.error();
  }
  return *info;
}

Result<void> ControlDevice::set_params(uint32_t dev_id, const uapi::Params& params,
                                       milliseconds timeout) {
  auto p = std::make_unique<uapi::Params>(params);
  p->len = sizeof(uapi::Params);
  auto r = run(uapi::kCmdSetParams, dev_id, p.get(), sizeof(*p), 0, timeout);
  if (!r) {
    if (r.error().code() == ETIMEDOUT) (void)p.release();
    return r.error();
  }
  return {};
}

Result<void> ControlDevice::start_dev(uint32_t dev_id, pid_t server_pid, milliseconds timeout,
                                      const AbortSignal* abort) {
  auto r = run(uapi::kCmdStartDev, dev_id, nullptr, 0, static_cast<uint64_t>(server_pid), timeout,
               abort);
  if (!r) return r.error();
  return {};
}

Result<void> ControlDevice::stop_dev(uint32_t dev_id, milliseconds timeout) {
  auto r = run(uapi::kCmdStopDev, dev_id, nullptr, 0, 0, timeout);
  if (!r) return r.error();
  return {};
}

Result<void> ControlDevice::try_stop_dev(uint32_t dev_id, milliseconds timeout) {
  auto r = run(uapi::kCmdTryStopDev, dev_id, nullptr, 0, 0, timeout);
  if (!r) return r.error();
  return {};
}

Result<void> ControlDevice::del_dev(uint32_t dev_id, milliseconds timeout) {
  auto r = run(uapi::kCmdDelDev, dev_id, nullptr, 0, 0, timeout);
  if (!r) return r.error();
  return {};
}

Result<void> ControlDevice::del_dev_async(uint32_t dev_id, milliseconds timeout) {
  auto r = run(uapi::kCmdDelDevAsync, dev_id, nullptr, 0, 0, timeout);
  if (!r) {
    // Before 6.9 the driver answers an unknown command with one of these.
    const int c = r.error().code();
    if (c == EOPNOTSUPP || c == EINVAL || c == kENOTSUPP)
      return Error(EOPNOTSUPP, "DEL_DEV_ASYNC (the kernel lacks it)");
    return r.error();
  }
  return {};
}

Result<void> ControlDevice::update_size(uint32_t dev_id, uint64_t sectors, milliseconds timeout) {
  auto r = run(uapi::kCmdUpdateSize, dev_id, nullptr, 0, sectors, timeout);
  if (!r) return r.error();
  return {};
}

Result<void> ControlDevice::quiesce_dev(uint32_t dev_id, milliseconds kernel_wait,
                                        milliseconds timeout) {
  // 0 would make the kernel wait for ever.
  const auto wait_ms = static_cast<uint64_t>(std::max<int64_t>(kernel_wait.count(), 1));
  auto r = run(uapi::kCmdQuiesceDev, dev_id, nullptr, 0, wait_ms, kernel_wait + timeout);
  if (!r) return r.error();
  return {};
}

Result<uapi::CtrlDevInfo> ControlDevice::get_dev_info(uint32_t dev_id, milliseconds timeout) {
  auto info = std::make_unique<uapi::CtrlDevInfo>();
  auto r = run(uapi::kCmdGetDevInfo, dev_id, info.get(), sizeof(*info), 0, timeout);
  if (!r) {
    if (r.error().code() == ETIMEDOUT) (void)info.release();
    return r.error();
  }
  return *info;
}

Result<uapi::Params> ControlDevice::get_params(uint32_t dev_id, milliseconds timeout) {
  auto p = std::make_unique<uapi::Params>();
  p->len = sizeof(uapi::Params);
  auto r = run(uapi::kCmdGetParams, dev_id, p.get(), sizeof(*p), 0, timeout);
  if (!r) {
    if (r.error().code() == ETIMEDOUT) (void)p.release();
    return r.error();
  }
  return *p;
}

Result<void> ControlDevice::start_user_recovery(uint32_t dev_id, milliseconds timeout) {
  auto r = run(uapi::kCmdStartUserRecovery, dev_id, nullptr, 0, 0, timeout);
  if (!r) return r.error();
  return {};
}

Result<void> ControlDevice::end_user_recovery(uint32_t dev_id, pid_t server_pid,
                                              milliseconds timeout, const AbortSignal* abort) {
  auto r = run(uapi::kCmdEndUserRecovery, dev_id, nullptr, 0, static_cast<uint64_t>(server_pid),
               timeout, abort);
  if (!r) return r.error();
  return {};
}

std::vector<uint32_t> char_device_ids() {
  std::vector<uint32_t> ids;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(kCharClassDir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("ublkc", 0) != 0 || name.size() == 5) continue;
    char* end = nullptr;
    const unsigned long id = std::strtoul(name.c_str() + 5, &end, 10);
    if (*end == '\0' && id < UINT32_MAX) ids.push_back(static_cast<uint32_t>(id));
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

bool char_device_exists(uint32_t dev_id) {
  const std::string p = std::string(kCharClassDir) + "/ublkc" + std::to_string(dev_id);
  return ::access(p.c_str(), F_OK) == 0;
}

}  // namespace ublkd
