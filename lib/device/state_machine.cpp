#include "device/state_machine.h"

namespace ublkd {

std::string_view to_string(DeviceState s) {
  switch (s) {
    case DeviceState::kNew: return "new";
    case DeviceState::kAdded: return "added";
    case DeviceState::kParamsSet: return "params-set";
    case DeviceState::kQueuesPrimed: return "queues-primed";
    case DeviceState::kStartPending: return "start-pending";
    case DeviceState::kLive: return "live";
    case DeviceState::kStopping: return "stopping";
    case DeviceState::kRemovedPending: return "removed-pending";
    case DeviceState::kRemoved: return "removed";
    case DeviceState::kFailed: return "failed";
    case DeviceState::kRecovering: return "recovering";
  }
  return "unknown";
}

bool transition_allowed(DeviceState from, DeviceState to) {
  using S = DeviceState;
  // Any state that is not terminal may fail: the device is then torn down.
  if (to == S::kFailed) return !is_terminal(from);
  switch (from) {
    // removed-pending straight from new: a device an earlier process
    // deleted, whose release this one waits for.
    case S::kNew: return to == S::kAdded || to == S::kRecovering || to == S::kRemovedPending;
    case S::kAdded: return to == S::kParamsSet || to == S::kStopping;
    case S::kParamsSet: return to == S::kQueuesPrimed || to == S::kStopping;
    case S::kQueuesPrimed: return to == S::kStartPending || to == S::kStopping;
    case S::kStartPending: return to == S::kLive || to == S::kStopping;
    case S::kLive: return to == S::kStopping;
    case S::kRecovering: return to == S::kLive || to == S::kStopping;
    case S::kStopping: return to == S::kRemoved || to == S::kRemovedPending;
    case S::kRemovedPending: return to == S::kRemoved;
    case S::kRemoved:
    case S::kFailed: return false;
  }
  return false;
}

DeviceState StateMachine::state() const {
  std::lock_guard lock(mu_);
  return state_;
}

std::string StateMachine::failure_reason() const {
  std::lock_guard lock(mu_);
  return reason_;
}

Result<void> StateMachine::transition(DeviceState to, std::string reason) {
  DeviceState from;
  {
    std::lock_guard lock(mu_);
    from = state_;
    if (!transition_allowed(from, to)) {
      return Error(EINVAL, "illegal state transition " + std::string(to_string(from)) + " -> " +
                               std::string(to_string(to)));
    }
    state_ = to;
    if (to == DeviceState::kFailed) reason_ = reason;
  }
  if (listener_) listener_(from, to, reason);
  return {};
}

}  // namespace ublkd
