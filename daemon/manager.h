// The daemon's set of devices: builds a backend and a Device from a spec,
// brings it live, logs every state transition once with the device's name,
// notices queues that die, and stops everything at shutdown. Runs on the
// daemon's control thread.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/unique_fd.h"
#include "config/device_spec.h"
#include "device/device.h"

namespace ublkd {

struct ManagerOptions {
  std::chrono::milliseconds start_timeout{10'000};
  std::string control_path = ControlDevice::kDefaultPath;
  // Test hook (UBLKD_TEST_UNPRIMED_TAG): the device of this name leaves the
  // last tag of queue 0 without a FETCH_REQ, so its START_DEV must time out.
  std::string unprimed_tag_device;
};

class Manager {
 public:
  explicit Manager(ManagerOptions options);
  ~Manager();

  // Opens the control device and reads the kernel's ublk features.
  Result<void> probe();
  uint64_t kernel_features() const { return features_; }

  // Brings the device live. On failure nothing of it is left in the kernel
  // and the error carries the reason (already logged).
  Result<void> add(const DeviceSpec& spec);
  Result<void> remove(const std::string& name);
  // Stops every device, in reverse order of creation.
  void stop_all();

  // Readable when some queue thread has exited; then call check_queues().
  int event_fd() const { return event_fd_.get(); }
  void check_queues();

  size_t live_count() const;
  const Device* find(const std::string& name) const;

 private:
  ManagerOptions options_;
  uint64_t features_ = 0;
  UniqueFd event_fd_;
  std::map<std::string, std::unique_ptr<Device>> devices_;
  std::vector<std::string> order_;  // creation order, for a reverse stop
};

// A backend for the spec, or why not.
Result<std::unique_ptr<Backend>> make_backend(const BackendSpec& spec);

// "ZERO_COPY|USER_RECOVERY|...|bit 40" for logs.
std::string describe_features(uint64_t features);

}  // namespace ublkd
