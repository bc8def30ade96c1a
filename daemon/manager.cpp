#include "manager.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>

#include <spdlog/spdlog.h>

#include "backend/mem_backend.h"
#include "ctrl/control_device.h"

namespace ublkd {

using std::chrono::milliseconds;

Result<std::unique_ptr<Backend>> make_backend(const BackendSpec& spec) {
  if (spec.type == "mem") {
    auto b = MemBackend::create(spec.size);
    if (!b) return b.error();
    return std::unique_ptr<Backend>(std::move(b).value());
  }
  return Error(EINVAL, "unknown backend type '" + spec.type + "'");
}

std::string describe_features(uint64_t features) {
  std::string out;
  for (unsigned bit = 0; bit < 64; ++bit) {
    if ((features & (1ull << bit)) == 0) continue;
    if (!out.empty()) out += '|';
    if (bit < std::size(uapi::kFeatureNames))
      out += uapi::kFeatureNames[bit];
    else
      out += "bit" + std::to_string(bit);
  }
  return out.empty() ? "none" : out;
}

Manager::Manager(ManagerOptions options) : options_(std::move(options)) {
  event_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
}

Manager::~Manager() { stop_all(); }

Result<void> Manager::probe() {
  if (!event_fd_) return errno_error("eventfd");
  auto ctrl = ControlDevice::open(options_.control_path);
  if (!ctrl) return ctrl.error();
  auto f = ctrl->probe_features(milliseconds(5'000));
  if (!f) return f.error().wrap("GET_FEATURES");
  features_ = *f;
  spdlog::info("kernel ublk features 0x{:x}: {}; control commands use the {} encoding", features_,
               describe_features(features_), ctrl->ioctl_encoding() ? "ioctl" : "legacy");
  return {};
}

Result<void> Manager::add(const DeviceSpec& spec) {
  if (devices_.count(spec.name) != 0) {
    const Device& d = *devices_.at(spec.name);
    if (!is_terminal(d.state()))
      return Error(EEXIST, "device " + spec.name + " already exists");
    devices_.erase(spec.name);
    std::erase(order_, spec.name);
  }
  auto backend = make_backend(spec.backend);
  if (!backend) {
    Error e = backend.error().wrap("device " + spec.name + ": backend " + spec.backend.type);
    spdlog::error("{}", e.to_string());
    return e;
  }

  DeviceConfig cfg;
  cfg.name = spec.name;
  cfg.queues = static_cast<uint16_t>(spec.queues);
  cfg.queue_depth = static_cast<uint16_t>(spec.queue_depth);
  cfg.logical_block_size = spec.logical_block_size;
  cfg.read_only = spec.read_only;
  cfg.kernel_features = features_;
  cfg.start_timeout = options_.start_timeout;
  cfg.control_path = options_.control_path;
  if (!options_.unprimed_tag_device.empty() && options_.unprimed_tag_device == spec.name) {
    cfg.unprimed_tag = std::make_pair(uint16_t{0}, static_cast<uint16_t>(spec.queue_depth - 1));
    spdlog::warn("device {}: test hook active: queue 0 tag {} gets no FETCH_REQ", spec.name,
                 spec.queue_depth - 1);
  }

  const std::string name = spec.name;
  auto listener = [name](DeviceState from, DeviceState to, const std::string& reason) {
    if (to == DeviceState::kFailed) {
      spdlog::error("device {}: state {} -> failed: {}", name, to_string(from), reason);
    } else {
      spdlog::info("device {}: state {} -> {}", name, to_string(from), to_string(to));
    }
  };
  const int efd = event_fd_.get();
  auto on_queue_exit = [efd] {
    const uint64_t one = 1;
    (void)!::write(efd, &one, sizeof(one));
  };
  auto dev = std::make_unique<Device>(cfg, std::move(backend).value(), listener, on_queue_exit);
  Device& d = *dev;
  devices_[name] = std::move(dev);
  order_.push_back(name);

  if (auto r = d.start(); !r) return r.error().wrap("device " + name);
  const auto& info = d.kernel_info();
  if (info.nr_hw_queues != spec.queues || info.queue_depth != spec.queue_depth) {
    spdlog::warn("device {}: kernel granted {} queues of depth {} (asked {} of {})", name,
                 info.nr_hw_queues, info.queue_depth, spec.queues, spec.queue_depth);
  }
  spdlog::info("device {} live at {}", name, d.block_device());
  return {};
}

Result<void> Manager::remove(const std::string& name) {
  auto it = devices_.find(name);
  if (it == devices_.end()) return Error(ENOENT, "no device named " + name);
  Result<void> r = it->second->stop();
  devices_.erase(it);
  std::erase(order_, name);
  if (!r) return r.error().wrap("device " + name);
  spdlog::info("device {} removed", name);
  return {};
}

void Manager::stop_all() {
  for (auto it = order_.rbegin(); it != order_.rend(); ++it) {
    auto d = devices_.find(*it);
    if (d == devices_.end()) continue;
    if (is_terminal(d->second->state())) continue;
    if (auto r = d->second->stop(); r) spdlog::info("device {} removed", *it);
  }
  devices_.clear();
  order_.clear();
}

void Manager::check_queues() {
  uint64_t count;
  (void)!::read(event_fd_.get(), &count, sizeof(count));
  for (auto& [name, dev] : devices_) {
    if (dev->state() != DeviceState::kLive || dev->queues_healthy()) continue;
    // A live device whose queue thread ended cannot serve that queue's I/O
    // any more: take it down so users see errors, not a hang.
    dev->fail(dev->queue_failure());
  }
}

size_t Manager::live_count() const {
  return static_cast<size_t>(std::count_if(devices_.begin(), devices_.end(), [](const auto& kv) {
    return kv.second->state() == DeviceState::kLive;
  }));
}

const Device* Manager::find(const std::string& name) const {
  auto it = devices_.find(name);
  return it == devices_.end() ? nullptr : it->second.get();
}

}  // namespace ublkd
