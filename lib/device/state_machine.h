// The control-plane life of one device, as pure logic: which states exist,
// which transitions are legal, and the reason a device failed. Device drives
// it; the daemon observes it (logs every transition, lists the state).
#pragma once

#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"

namespace ublkd {

enum class DeviceState {
  kNew,             // object exists, nothing asked of the kernel yet
  kAdded,           // ADD_DEV done: the kernel knows the device
  kParamsSet,       // SET_PARAMS done
  kQueuesPrimed,    // every tag of every queue has its FETCH_REQ submitted
  kStartPending,    // START_DEV sent, not yet answered
  kLive,            // /dev/ublkbN serves I/O
  kStopping,        // STOP_DEV, queue shutdown and DEL_DEV under way
  kRemovedPending,  // deleted, but the kernel keeps its id until the last
                    // user of /dev/ublkbN (a mount, a process) closes it
  kRemoved,         // gone from the kernel, cleanly
  kFailed,          // could not go live or died; torn down, reason recorded
  kRecovering,      // reattaching to a device the kernel kept quiesced
};

std::string_view to_string(DeviceState s);

// Whether `from -> to` is a legal step.
bool transition_allowed(DeviceState from, DeviceState to);

// True once the device serves no more and is never started again: removed
// (or only waiting for the kernel to let go of its id), or failed.
inline bool is_terminal(DeviceState s) {
  return s == DeviceState::kRemoved || s == DeviceState::kRemovedPending ||
         s == DeviceState::kFailed;
}

class StateMachine {
 public:
  // Called after every transition, outside the lock, on the thread that made
  // the transition. `reason` is empty except for kFailed.
  using Listener = std::function<void(DeviceState from, DeviceState to, const std::string& reason)>;

  explicit StateMachine(Listener listener = {}) : listener_(std::move(listener)) {}

  DeviceState state() const;
  // The failure reason once in kFailed, else empty.
  std::string failure_reason() const;

  // EINVAL for an illegal step; the state is then unchanged.
  Result<void> transition(DeviceState to, std::string reason = {});

 private:
  mutable std::mutex mu_;
  DeviceState state_ = DeviceState::kNew;
  std::string reason_;
  Listener listener_;
};

}  // namespace ublkd
