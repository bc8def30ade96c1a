// The ublk control device (/dev/ublk-control) spoken through its own SQE128
// io_uring. Every command has a deadline: the kernel may sleep in START_DEV
// (until all fetches are in) and in DEL_DEV (until every reference is gone),
// and a caller must be able to give up, cancel and report instead of hanging.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "base/abort_signal.h"
#include "base/error.h"
#include "base/unique_fd.h"
#include "uapi/ublk.h"
#include "uring/ring.h"

namespace ublkd {

class ControlDevice {
 public:
  static constexpr const char* kDefaultPath = "/dev/ublk-control";
  static constexpr uint32_t kAutoDevId = UINT32_MAX;

  static Result<ControlDevice> open(const std::string& path = kDefaultPath);

  // Probes GET_FEATURES (6.5+) and selects the command encoding: the ioctl
  // encoding when the kernel offers UBLK_F_CMD_IOCTL_ENCODE, legacy numbers
  // otherwise. A kernel without GET_FEATURES reports 0 and stays on legacy.
  Result<uint64_t> probe_features(std::chrono::milliseconds timeout);
  void set_ioctl_encoding(bool on) { ioctl_encode_ = on; }
  bool ioctl_encoding() const { return ioctl_encode_; }

  // Returns the dev_info the kernel accepted (id, flags, depth as granted).
  Result<uapi::CtrlDevInfo> add_dev(const uapi::CtrlDevInfo& wanted,
                                    std::chrono::milliseconds timeout);
  Result<void> set_params(uint32_t dev_id, const uapi::Params& params,
                          std::chrono::milliseconds timeout);
  // With `abort`, START_DEV also ends when the signal is triggered: the
  // command is cancelled and the result is ECANCELED ("START_DEV aborted"),
  // unless the kernel had already completed it, which then counts as done.
  Result<void> start_dev(uint32_t dev_id, pid_t server_pid, std::chrono::milliseconds timeout,
                         const AbortSignal* abort = nullptr);
  Result<void> stop_dev(uint32_t dev_id, std::chrono::milliseconds timeout);
  // STOP_DEV only while nobody has the disk open (UBLK_F_SAFE_STOP_DEV):
  // EBUSY, and the device keeps running, otherwise.
  Result<void> try_stop_dev(uint32_t dev_id, std::chrono::milliseconds timeout);
  // Waits, up to `timeout`, until the kernel released the device (see
  // DEL_DEV in the file comment); the device is deleted even when the wait
  // ends early.
  Result<void> del_dev(uint32_t dev_id, std::chrono::milliseconds timeout);
  // DEL_DEV_ASYNC (6.9+): deletes without waiting for the last reference to
  // go; the kernel keeps the device id until then. EOPNOTSUPP on kernels
  // that lack the command.
  Result<void> del_dev_async(uint32_t dev_id, std::chrono::milliseconds timeout);
  // UPDATE_SIZE (6.16+, a device added with UBLK_F_UPDATE_SIZE): the live
  // disk's capacity becomes `sectors`, and its users are told.
  Result<void> update_size(uint32_t dev_id, uint64_t sectors, std::chrono::milliseconds timeout);
  // QUIESCE_DEV (a device added with UBLK_F_QUIESCE): the kernel stops
  // handing requests to the server (new ones wait in it for the next one),
  // waits up to `kernel_wait` for every queue to have a fetch outstanding,
  // then completes those fetches with UBLK_IO_RES_ABORT. The requests the
  // server holds stay its own to answer. EBUSY: some queue never had an
  // idle tag in time; new requests are held all the same.
  Result<void> quiesce_dev(uint32_t dev_id, std::chrono::milliseconds kernel_wait,
                           std::chrono::milliseconds timeout);
  Result<uapi::CtrlDevInfo> get_dev_info(uint32_t dev_id, std::chrono::milliseconds timeout);
  Result<uapi::Params> get_params(uint32_t dev_id, std::chrono::milliseconds timeout);
  // Recovery of a device whose server died (UBLK_F_USER_RECOVERY): START
  // resets the kernel's queues for a new server; it is refused with EBUSY
  // until the old server's char device is closed and the device quiesced.
  // END waits, like START_DEV, until every tag has a fetch outstanding, then
  // lets the queued I/O through.
  Result<void> start_user_recovery(uint32_t dev_id, std::chrono::milliseconds timeout);
  Result<void> end_user_recovery(uint32_t dev_id, pid_t server_pid,
                                 std::chrono::milliseconds timeout,
                                 const AbortSignal* abort = nullptr);

 private:
  ControlDevice(UniqueFd fd, Ring ring) : fd_(std::move(fd)), ring_(std::move(ring)) {}

  // Runs one command. `buf`/`len` is the command's in/out buffer; it must
  // stay valid until the kernel is done with it, see run() for how a timed
  // out command is handled. `abort`, if given, ends the wait early with
  // ECANCELED; only commands without a buffer take one.
  Result<int> run(uint8_t op, uint32_t dev_id, void* buf, uint16_t len, uint64_t data0,
                  std::chrono::milliseconds timeout, const AbortSignal* abort = nullptr);
  uint32_t encode(uint8_t op) const;

  UniqueFd fd_;
  Ring ring_;
  uint64_t next_user_data_ = 1;
  bool ioctl_encode_ = true;
};

std::string ctrl_op_name(uint8_t op);

// The ids of the devices whose char device (/dev/ublkcN) exists, from
// /sys/class/ublk-char. A deleted device whose id the kernel still holds
// has none.
std::vector<uint32_t> char_device_ids();
bool char_device_exists(uint32_t dev_id);

}  // namespace ublkd
