#include "manager.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <set>
#include <thread>

#include <spdlog/spdlog.h>

#include "atomic_file.h"
#include "block_users.h"
#include "countdown.h"
#include "ctrl/control_device.h"
#include "log.h"
#include "uring/ring.h"

namespace ublkd {

using std::chrono::milliseconds;

namespace {

// How often the kernel is asked whether it released a deleted device that
// its users still held.
constexpr milliseconds kReleaseCheckPeriod{500};

// How long a `del` waits for a device's users to let go before it refuses.
constexpr milliseconds kBusyGrace{2'000};

// Why a deleted device still has an id, for errors and logs.
std::string held_by_users(const Device& dev) {
  return "the kernel releases /dev/ublkb" + std::to_string(dev.dev_id().value_or(0)) +
         " when its last user (a mount, a process) closes it";
}

}  // namespace

Manager::Manager(EventLoop& loop, ManagerOptions options)
    : loop_(loop), options_(std::move(options)) {
  if (!options_.state_dir.empty()) {
    state_.emplace(options_.state_dir / "devices");
    names_.emplace(options_.state_dir / "names");
  }
}

Manager::~Manager() {
  // Normally shutdown() has run. Otherwise stop what is left, bounded, so no
  // device outlives the daemon.
  for (auto& [name, e] : entries_) {
    if (!e->op.joinable()) continue;
    if (e->starting) e->dev->abort_start("ublkd is exiting");
    e->op.join();
  }
  if (queue_exit_fd_) loop_.remove(queue_exit_fd_.get());
  if (storage_resize_fd_) loop_.remove(storage_resize_fd_.get());
  entries_.clear();
}

Result<void> Manager::probe() {
  queue_exit_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!queue_exit_fd_) return errno_error("eventfd");
  if (auto r = loop_.add(queue_exit_fd_.get(), EPOLLIN, [this](uint32_t) { on_queue_exit(); }); !r)
    return r;
  storage_resize_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!storage_resize_fd_) return errno_error("eventfd");
  if (auto r =
          loop_.add(storage_resize_fd_.get(), EPOLLIN, [this](uint32_t) { on_storage_resize(); });
      !r)
    return r;
  auto ctrl = ControlDevice::open(options_.control_path);
  if (!ctrl) return ctrl.error();
  auto f = ctrl->probe_features(milliseconds(5'000));
  if (!f) return f.error().wrap("GET_FEATURES");
  features_ = *f;
  ioctl_encoding_ = ctrl->ioctl_encoding();
  return {};
}

std::filesystem::path Manager::dropin_path(const std::string& name) const {
  return options_.config_dir / std::string(kDevicesDir) / (name + ".json");
}

template <typename T>
void Manager::start_op(const std::string& name, std::function<T()> work,
                       std::function<void(T)> then) {
  Entry& e = *entries_.at(name);
  ++ops_running_;
  e.op = std::thread([this, name, work = std::move(work), then = std::move(then)]() mutable {
    T result = work();
    loop_.post([this, name, then = std::move(then), result = std::move(result)]() mutable {
      finish_op(name, [&then, &result] { then(std::move(result)); });
    });
  });
}

void Manager::start_op(const std::string& name, std::function<void()> work,
                       std::function<void()> then) {
  start_op<bool>(
      name,
      [work = std::move(work)] {
        work();
        return true;
      },
      [then = std::move(then)](bool) { then(); });
}

void Manager::finish_op(const std::string& name, std::function<void()> then) {
  auto it = entries_.find(name);
  if (it != entries_.end() && it->second->op.joinable()) it->second->op.join();
  --ops_running_;
  then();
  // A queue that died while the operation ran was not looked at then.
  on_queue_exit();
  maybe_finish_shutdown();
  changed();
}

void Manager::changed() {
  if (on_change_) on_change_();
}

Manager::Entry& Manager::make_entry(const DeviceSpec& spec, bool persistent, uint64_t identity,
                                    bool reopen) {
  auto owned = std::make_unique<Entry>();
  Entry& e = *owned;
  e.spec = spec;
  e.identity = identity;
  e.persistent = persistent;
  // What the record says from the start; the hooks add the id.
  const DeviceRecord record{spec, std::nullopt, identity, persistent};
  auto listener = [this, &e, record](DeviceState from, DeviceState to, const std::string& reason) {
    on_state(e, record, from, to, reason);
  };
  const int efd = queue_exit_fd_.get();
  auto on_queue_exit = [efd] {
    const uint64_t one = 1;
    (void)!::write(efd, &one, sizeof(one));
  };
  const BackendEnv env{options_.mem_store.get(), reopen};
  Device::BackendFactory open = [spec, env] { return make_backend(spec, env); };
  e.dev = std::make_unique<Device>(device_config(e, record, reopen), std::move(open), listener,
                                   on_queue_exit);
  const int rfd = storage_resize_fd_.get();
  e.dev->on_storage_resize([rfd] {
    const uint64_t one = 1;
    (void)!::write(rfd, &one, sizeof(one));
  });
  entries_[spec.name] = std::move(owned);
  return e;
}

DeviceConfig Manager::device_config(Entry& e, const DeviceRecord& record, bool reopen) {
  const DeviceSpec& spec = e.spec;
  const std::string name = spec.name;
  DeviceConfig cfg;
  static_cast<DeviceShape&>(cfg) = spec;
  cfg.name = name;
  cfg.kernel_features = features_;
  const BackendCaps caps = backend_caps(spec.backend);
  cfg.zero_copy = caps.zero_copy && spec.backend.zero_copy;
  cfg.reissue_safe = caps.reissue_safe;
  cfg.identity = e.identity;
  cfg.idle_spin = options_.idle_spin;
  cfg.batch_io = options_.batch_io;
  cfg.start_timeout = options_.start_timeout;
  cfg.control_path = options_.control_path;
  if (reopen && state_) {
    cfg.earlier_recovery_cut_short = state_->recovering_marked(name);
    cfg.before_recovery_start = [this, name] { return state_->mark_recovering(name); };
  }
  if (!reopen && state_) {
    // The record exists before the kernel can hold the device: a crash right
    // after ADD_DEV still leaves its identity to find the device by.
    cfg.before_add = [this, &e, record]() -> Result<void> {
      if (auto w = state_->save(record); !w) {
        e.record_error = w.error();
        return w.error().wrap("state record");
      }
      return {};
    };
  }
  cfg.skip_sync_on_stop = options_.skip_sync;
  if (!options_.unprimed_tag_device.empty() && options_.unprimed_tag_device == name) {
    cfg.unprimed_tag = std::make_pair(uint16_t{0}, static_cast<uint16_t>(spec.queue_depth - 1));
    devlog::warn(name, "device {}: test hook active: queue 0 tag {} gets no FETCH_REQ",
                 spec.queue_depth - 1);
  }
  return cfg;
}

void Manager::on_state(Entry& e, const DeviceRecord& record, DeviceState from, DeviceState to,
                       const std::string& reason) {
  const std::string& name = record.spec.name;
  if (to == DeviceState::kFailed) {
    devlog::error(name, "device {}: state {} -> failed: {}", to_string(from), reason);
  } else {
    devlog::info(name, "device {}: state {} -> {}", to_string(from), to_string(to));
  }
  const Device& dev = *e.dev;
  // Completed the moment the kernel names the device: a crash from here
  // on leaves a record with the id a later ublkd looks at first.
  if (to == DeviceState::kAdded) crash_here("after-add-dev");
  if (to == DeviceState::kAdded && state_ && dev.dev_id()) {
    DeviceRecord r = record;
    r.dev_id = dev.dev_id();
    if (auto w = state_->save(r); !w) e.record_error = w.error();
    retire_records_naming(*dev.dev_id(), name);
  }
  // Before START_DEV makes the disk appear, when udev looks the name up;
  // again when live, which a recovered device reaches without kAdded.
  if ((to == DeviceState::kAdded || to == DeviceState::kLive) && names_ && dev.dev_id()) {
    if (auto w = names_->publish(*dev.dev_id(), name); !w)
      devlog::warn(name, "device {}: no /dev/ublk/by-name link: {}", w.error().to_string());
  }
  if (is_terminal(to) && names_ && dev.dev_id()) names_->withdraw(*dev.dev_id(), name);
  if (to == DeviceState::kLive && from == DeviceState::kRecovering && state_) {
    if (auto w = state_->clear_recovering(name); !w)
      devlog::warn(name, "device {}: state: {}", w.error().to_string());
  }
  // Once the kernel holds nothing of it, nothing needs keeping.
  if (is_terminal(to) && dev.released()) {
    if (dev.dev_id()) crash_here("after-del-dev");
    retire(record.spec);
  }
  // Runs on the operation's thread; whoever watches states lives on the loop.
  loop_.post([this] { changed(); });
}

void Manager::crash_here(std::string_view point) const {
  if (options_.crash_at != point) return;
  spdlog::warn("test hook: exiting at {}", point);
  spdlog::shutdown();
  std::_Exit(99);
}

void Manager::save_record(const Entry& e) {
  if (!state_ || !e.dev->dev_id()) return;
  const bool removed = e.dev->state() == DeviceState::kRemovedPending;
  if (auto w = state_->save({e.spec, e.dev->dev_id(), e.identity, e.persistent, removed}); !w)
    devlog::error(e.spec.name, "device {}: state record: {}", w.error().to_string());
}

void Manager::retire(const DeviceSpec& spec) {
  if (state_) {
    (void)state_->clear_recovering(spec.name);
    if (auto w = state_->remove(spec.name); !w)
      devlog::warn(spec.name, "device {}: state record: {}", w.error().to_string());
  }
  if (options_.mem_store && keeps_memory(spec)) options_.mem_store->drop(spec.name);
}

void Manager::retire_records_naming(uint32_t dev_id, const std::string& owner) {
  std::vector<std::string> problems;
  for (const DeviceRecord& r : state_->load(problems)) {
    if (r.spec.name == owner || r.dev_id != dev_id) continue;
    devlog::warn(r.spec.name,
                 "device {}: its state record names /dev/ublkb{}, which the kernel has just given "
                 "to device {}: the record is stale and retired",
                 dev_id, owner);
    retire(r.spec);
  }
}

std::optional<OpError> Manager::refuse_add(const std::string& name, bool persist) {
  if (shutting_down_ || handed_over_)
    return OpError{Failure::kShuttingDown, "ublkd is shutting down"};
  if (auto it = entries_.find(name); it != entries_.end()) {
    Entry& old = *it->second;
    if (old.dev->state() == DeviceState::kRemovedPending)
      return OpError{Failure::kBusy,
                     "device " + name + " was removed and " + held_by_users(*old.dev)};
    if (old.op.joinable())
      return OpError{Failure::kBusy, "device " + name + " is busy (" +
                                         std::string(to_string(old.dev->state())) + ")"};
    if (!is_terminal(old.dev->state()))
      return OpError{Failure::kExists, "device " + name + " already exists"};
    forget(it);  // a failed device of that name is replaced
  }
  if (persist) {
    std::error_code ec;
    const auto path = dropin_path(name);
    if (std::filesystem::exists(path, ec))
      return OpError{Failure::kExists, "drop-in " + path.string() + " already exists"};
  }
  return std::nullopt;
}

void Manager::add(DeviceSpec spec, bool persist, AddDone done) {
  const std::string name = spec.name;
  if (auto refused = refuse_add(name, persist)) return done(std::move(*refused));
  const uint64_t identity = options_.no_identity ? 0 : Device::new_identity();
  Entry& entry = make_entry(spec, persist || !spec.source.empty(), identity, /*reopen=*/false);
  entry.from_api = spec.source.empty();
  entry.starting = true;
  changed();
  start_op<OpResult<void>>(
      name, [this, &entry, persist] { return bring_up(entry, persist); },
      [this, name, persist, done = std::move(done)](OpResult<void> result) {
        finish_add(name, persist, std::move(result), done);
      });
}

OpResult<void> Manager::bring_up(Entry& e, bool persist) {
  const DeviceSpec& spec = e.spec;
  Device& dev = *e.dev;
  if (auto b = dev.open_backend(); !b) {
    return OpError{Failure::kBackend, "device " + spec.name + ": backend " + spec.backend.type +
                                          ": " + b.error().to_string()};
  }
  if (auto r = dev.start(); !r) {
    const Failure kind = e.record_error ? Failure::kIo : failure_of(r.error().code());
    return OpError{kind, "device " + spec.name + ": " + r.error().message()};
  }
  if (e.record_error) {
    // Without its record a crash would leave the device where no later
    // ublkd finds it: not a device to hand out.
    (void)dev.stop();
    return OpError{Failure::kIo, "device " + spec.name + ": state record: " +
                                     e.record_error->to_string() + " (device removed again)"};
  }
  if (!persist) return {};
  if (auto w = write_dropin(spec); !w) {
    (void)dev.stop();
    return OpError{Failure::kIo, "device " + spec.name + ": persist: " + w.error().to_string() +
                                     " (device removed again)"};
  }
  return {};
}

void Manager::finish_add(const std::string& name, bool persist, OpResult<void> result,
                         AddDone done) {
  auto it = entries_.find(name);
  Entry& e = *it->second;
  e.starting = false;
  if (!result) {
    const OpError& failure = result.error();
    // The message names the device already.
    if (failure.kind == Failure::kIo) devlog::error(name, "{1}", failure.message);
    // The client was told; a failed API device is not kept for `list`.
    if (e.from_api) forget(it);
    return done(failure);
  }
  const auto& info = e.dev->kernel_info();
  if (info.nr_hw_queues != e.spec.queues || info.queue_depth != e.spec.queue_depth) {
    devlog::warn(name, "device {}: kernel granted {} queues of depth {} (asked {} of {})",
                 info.nr_hw_queues, info.queue_depth, e.spec.queues, e.spec.queue_depth);
  }
  if (persist) {
    e.spec.source = dropin_path(name).string();
    devlog::info(name, "device {}: spec persisted to {}", e.spec.source);
    save_record(e);
  }
  log_live(e);
  done(snapshot(e));
}

std::string Manager::serving_notes(Device& dev) {
  std::string notes = "queue rings: " + setup_flags_string(dev.queue_ring_flags());
  if (const std::string io = dev.backend().io_notes(); !io.empty()) notes += "; " + io;
  if (dev.bridged_user_copy())
    notes += "; user copy (UBLK_F_USER_COPY) through buffers: the device was added with it, and "
             "this backend cannot copy through the char device";
  else if (dev.kernel_info().flags & uapi::kFeatUserCopy)
    notes += "; user copy (UBLK_F_USER_COPY)";
  if (dev.zero_copy())
    notes += "; zero copy (the kernel registers each request's pages for the backend)";
  if (dev.batch_io()) notes += "; batched io commands (UBLK_F_BATCH_IO)";
  return notes;
}

void Manager::report_unserved(Device& dev, const std::string& name) {
  if (!dev.zero_copy_unserved()) return;
  const std::string notes = dev.backend().io_notes();
  devlog::error(name,
                "device {}: the kernel lends it each request's pages (zero copy, as when it was "
                "added), which its backend cannot serve now{}: every read and write fails with "
                "EINVAL; del the device and add it again",
                notes.empty() ? "" : " (" + notes + ")");
}

void Manager::log_live(const Entry& e) const {
  const std::string& name = e.spec.name;
  if (e.spec.recovery && (e.dev->kernel_info().flags & uapi::kFeatUserRecovery) == 0) {
    devlog::warn(name,
                 "device {}: the kernel did not grant USER_RECOVERY: the device will not "
                 "survive ublkd exiting");
  }
  devlog::info(name, "device {} live at {} ({})", e.dev->block_device(), serving_notes(*e.dev));
  if (const auto& f = e.dev->io_flusher_error()) {
    devlog::warn(name,
                 "device {}: queue threads are not I/O flushers: {} (ublkd lacks "
                 "CAP_SYS_RESOURCE); writeback to this device under memory pressure may "
                 "deadlock",
                 f->to_string());
  }
}

void Manager::up(DeviceSpec spec, AddDone done) {
  if (auto it = entries_.find(spec.name); it != entries_.end()) {
    Entry& e = *it->second;
    if (!e.op.joinable() && e.dev->state() == DeviceState::kLive) return done(snapshot(e));
  }
  add(std::move(spec), /*persist=*/false, std::move(done));
}

void Manager::watch(const std::string& name, std::chrono::milliseconds timeout, WatchDone done) {
  watches_.push_back({name, std::chrono::steady_clock::now() + timeout, std::move(done)});
  // A device that is not live answers at once; the rest are looked at by a
  // timer. Polling keeps this independent of how each state change comes
  // about (an operation thread, a dying queue, a shutdown).
  check_watches(false);
  if (!watch_timer_ && !watches_.empty()) {
    watch_timer_ = true;
    (void)loop_.every(std::chrono::milliseconds(200), [this] { check_watches(false); });
  }
}

void Manager::check_watches(bool all) {
  const auto now = std::chrono::steady_clock::now();
  std::vector<Watch> due;
  for (auto it = watches_.begin(); it != watches_.end();) {
    auto e = entries_.find(it->name);
    const bool live = e != entries_.end() && e->second->dev->state() == DeviceState::kLive;
    if (all || !live || now >= it->deadline) {
      due.push_back(std::move(*it));
      it = watches_.erase(it);
    } else {
      ++it;
    }
  }
  for (Watch& w : due) {
    auto e = entries_.find(w.name);
    w.done(e == entries_.end() ? std::nullopt : std::optional(snapshot(*e->second)));
  }
}

void Manager::remove(const std::string& name, bool force, DelDone done) {
  auto it = entries_.find(name);
  if (it == entries_.end()) return done(OpError{Failure::kNotFound, "no device named " + name});
  Entry& e = *it->second;
  // Removed already; only the kernel's release is outstanding.
  if (e.dev->state() == DeviceState::kRemovedPending) return done(snapshot(e));
  if (e.op.joinable())
    return done(OpError{Failure::kBusy, "device " + name + " is busy (" +
                                            std::string(to_string(e.dev->state())) + ")"});
  if (shutting_down_ || handed_over_)
    return done(OpError{Failure::kShuttingDown, "ublkd is shutting down"});
  if (is_terminal(e.dev->state())) {
    DeviceSnapshot gone = snapshot(e);
    gone.state = DeviceState::kRemoved;
    if (e.dev->delete_pending()) {
      devlog::info(name,
                   "device {} removed (it had failed); its state record stays until the kernel "
                   "releases /dev/ublkb{}",
                   *e.dev->dev_id());
    } else {
      devlog::info(name, "device {} removed (it had failed)");
    }
    forget(it);
    changed();
    return done(gone);
  }
  Device* dev = e.dev.get();
  auto work = [dev, name, force]() -> OpResult<void> {
    // The kernel's name of the disk, "ublkb3".
    const std::string disk = "ublkb" + std::to_string(dev->dev_id().value_or(0));
    auto attempt = [&]() -> Result<void> {
      if (force || dev->state() != DeviceState::kLive || !dev->dev_id()) return dev->stop();
      if (dev->safe_stop()) return dev->stop_if_unused();
      if (!block_device_users(disk).empty()) return Error(EBUSY, "in use");
      // Nobody the system shows; one who opens it from now on loses.
      return dev->stop();
    };
    // Some users come and go on their own: udev's probe of a new device,
    // a blkid. Only one still there after the grace is a refusal.
    const auto deadline = std::chrono::steady_clock::now() + kBusyGrace;
    Result<void> r = attempt();
    while (!r && r.error().code() == EBUSY && dev->state() == DeviceState::kLive &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(milliseconds(100));
      r = attempt();
    }
    if (r) return {};
    if (r.error().code() == EBUSY && dev->state() == DeviceState::kLive) {
      std::string who;
      for (const std::string& u : block_device_users(disk))
        who += (who.empty() ? "" : "; ") + u;
      return OpError{Failure::kBusy,
                     "device " + name + " is in use (" +
                         (who.empty() ? std::string("open by somebody the system does not show")
                                      : who) +
                         "); unmount or close it first, or del with force, which fails its I/O"};
    }
    return OpError{Failure::kKernel, "device " + name + ": " + r.error().message()};
  };
  auto then = [this, name, done = std::move(done)](OpResult<void> stopped) {
    auto it = entries_.find(name);
    // Refused while in use: the device goes on as it was.
    if (!stopped && stopped.error().kind == Failure::kBusy) {
      devlog::info(name, "{1}", stopped.error().message);
      return done(stopped.error());
    }
    if (!stopped || it == entries_.end()) {
      if (it != entries_.end()) forget(it);
      return done(stopped ? OpError{Failure::kNotFound, "no device named " + name}
                          : stopped.error());
    }
    Entry& e = *it->second;
    const DeviceSnapshot after = snapshot(e);
    if (after.state == DeviceState::kRemovedPending) {
      devlog::warn(name, "device {} removed from the system; {}", held_by_users(*e.dev));
      watch_release(e);
      return done(after);
    }
    forget(it);
    devlog::info(name, "device {} removed");
    done(after);
  };
  start_op<OpResult<void>>(name, std::move(work), std::move(then));
}

void Manager::watch_release(const Entry& e) {
  // The record now says "removed": a later ublkd only waits for the release.
  save_record(e);
  if (!release_timer_) {
    release_timer_ = true;
    (void)loop_.every(kReleaseCheckPeriod, [this] { check_releases(); });
  }
}

void Manager::check_releases() {
  if (shutting_down_ || handed_over_) return;
  for (auto& [name, e] : entries_) {
    if (e->op.joinable() || !e->dev->delete_pending()) continue;
    Device* dev = e->dev.get();
    const std::string n = name;  // clang before 16 cannot capture a structured binding
    start_op<Result<bool>>(
        n, [dev] { return dev->check_released(); },
        [this, n](Result<bool> released) {
          auto it = entries_.find(n);
          if (it == entries_.end()) return;
          Entry& entry = *it->second;
          if (!released) {
            devlog::warn(n, "device {}: asking the kernel whether it released /dev/ublkb{}: {}",
                         *entry.dev->dev_id(), released.error().to_string());
            return;
          }
          if (!*released) return;
          devlog::info(n,
                       "device {}: the kernel released /dev/ublkb{}; its state record is retired",
                       *entry.dev->dev_id());
          // A removed device is done with; a failed one stays listed, with
          // its reason, until deleted or replaced.
          if (entry.dev->state() == DeviceState::kRemoved)
            forget(it);
          else
            retire(entry.spec);
        });
  }
}

void Manager::recover_all(std::function<void()> done) {
  std::vector<DeviceRecord> records;
  if (state_) {
    std::vector<std::string> problems;
    records = state_->load(problems);
    // An unreadable record names no device to recover; it stays for a
    // person to look at.
    for (const auto& p : problems) spdlog::error("state: {}", p);
  }
  std::set<std::string> claimed;
  for (const auto& r : records) claimed.insert(r.spec.name);
  if (options_.mem_store) {
    for (const auto& name : options_.mem_store->drop_unclaimed(claimed))
      spdlog::warn("dropped the memory of mem device {}: no state record claims it", name);
  }
  records = drop_ambiguous(std::move(records));
  if (records.empty()) return done();
  spdlog::info("recovering {} device(s) from {}", records.size(), state_->dir().string());

  auto all_settled = Countdown::start(records.size(), std::move(done));
  for (const DeviceRecord& r : records) recover_one(r, [all_settled] { all_settled->one_done(); });
}

void Manager::recover_one(const DeviceRecord& r, std::function<void()> done) {
  const std::string name = r.spec.name;
  Entry& e = make_entry(r.spec, r.persistent, r.identity, /*reopen=*/true);
  e.from_api = r.spec.source.empty();
  if (r.removed) {
    (void)e.dev->await_release(*r.dev_id);
    devlog::info(name, "device {}: removed by the last ublkd; {}", held_by_users(*e.dev));
    watch_release(e);
    return done();
  }
  e.starting = true;
  Device* dev = e.dev.get();
  const std::optional<uint32_t> id = r.dev_id;
  devlog::info(name, "device {}: recovering {} (recovery {})",
               id ? "/dev/ublkb" + std::to_string(*id)
                  : "the device with identity " + format_identity(r.identity),
               r.spec.recovery ? "on" : "off");
  // Whether the record turned out to be stale (ESTALE: the id is another
  // device's now).
  auto work = [dev, id] {
    auto rec = dev->recover(id);
    return !rec && rec.error().code() == ESTALE;
  };
  start_op<bool>(name, work, [this, name, done = std::move(done)](bool stale) {
    finish_recovery(name, stale);
    done();
  });
}

void Manager::finish_recovery(const std::string& name, bool stale) {
  auto it = entries_.find(name);
  if (it == entries_.end()) return;
  Entry& entry = *it->second;
  entry.starting = false;
  if (entry.dev->state() == DeviceState::kLive) {
    devlog::info(name, "device {} recovered: live again at {} ({})", entry.dev->block_device(),
                 serving_notes(*entry.dev));
    report_unserved(*entry.dev, name);
    // Storage that grew while no ublkd served it (recovered at the old size).
    if (entry.dev->storage_size() != entry.dev->size()) {
      const uint64_t one = 1;
      (void)!::write(storage_resize_fd_.get(), &one, sizeof(one));
    }
  } else if (stale) {
    devlog::error(name, "device {}: {}", entry.dev->failure_reason());
    retire(entry.spec);
    forget(it);
  } else if (entry.dev->released()) {
    devlog::warn(name,
                 "device {}: not recovered ({}); nothing of it is left in the kernel, its "
                 "record is retired",
                 entry.dev->failure_reason());
  } else if (entry.dev->delete_pending()) {
    devlog::warn(name, "device {}: not recovered ({}); deleted, and {}",
                 entry.dev->failure_reason(), held_by_users(*entry.dev));
    watch_release(entry);
  } else {
    devlog::error(name, "device {}: not recovered and left in the kernel: {}",
                  entry.dev->failure_reason());
  }
}

std::vector<DeviceRecord> Manager::drop_ambiguous(std::vector<DeviceRecord> records) {
  for (const auto& [stale, newer] : take_superseded(records)) {
    devlog::error(stale.spec.name,
                  "device {}: its state record (written by a ublkd without device identities) "
                  "names /dev/ublkb{}, as the newer record of device {} does: the record is "
                  "stale and retired",
                  *stale.dev_id, newer);
    retire(stale.spec);
  }
  return records;
}

OpResult<std::vector<std::string>> Manager::hand_over() {
  if (shutting_down_ || handed_over_)
    return OpError{Failure::kShuttingDown, "ublkd is shutting down"};
  std::vector<std::string> names;
  std::string busy;
  std::string unrecoverable;
  for (const auto& [name, e] : entries_) {
    // Done with (a release check may be under way): its record, if any,
    // speaks for it.
    if (is_terminal(e->dev->state())) continue;
    if (e->op.joinable()) {
      busy += (busy.empty() ? "" : ", ") + name;
      continue;
    }
    if ((e->dev->kernel_info().flags & uapi::kFeatUserRecovery) == 0)
      unrecoverable += (unrecoverable.empty() ? "" : ", ") + name;
    names.push_back(name);
  }
  if (!busy.empty())
    return OpError{Failure::kBusy, "devices busy (an operation is under way): " + busy};
  if (!unrecoverable.empty()) {
    return OpError{Failure::kBusy,
                   "devices without USER_RECOVERY would not survive: " + unrecoverable +
                       " (delete them first, or stop ublkd instead)"};
  }
  if (!state_) return OpError{Failure::kIo, "ublkd keeps no state dir to hand devices over in"};
  handed_over_ = true;
  return names;
}

void Manager::quiesce_handed_over(std::chrono::milliseconds budget) {
  const auto deadline = std::chrono::steady_clock::now() + budget;
  std::vector<std::thread> threads;
  for (auto& [name, e] : entries_) {
    Device* dev = e->dev.get();
    if (dev->state() != DeviceState::kLive) continue;
    if (!dev->can_quiesce()) {
      const bool reissue = (dev->kernel_info().flags & uapi::kFeatUserRecoveryReissue) != 0;
      devlog::info(name,
                   "device {}: handed over as it runs (no UBLK_F_QUIESCE{}): {} request(s) in "
                   "flight {}",
                   dev->batch_io() ? ": batched io commands" : "", dev->in_flight(),
                   reissue ? "go to the next ublkd again" : "fail");
      continue;
    }
    threads.emplace_back([dev, deadline, name = name] {
      auto q = dev->quiesce(deadline);
      if (!q) {
        devlog::warn(name, "device {}: not quiesced for the hand-over: {}", q.error().to_string());
      } else {
        devlog::info(name,
                     "device {}: quiesced for the hand-over: {} request(s) in flight answered, "
                     "{} left for the next ublkd ({} served in all)",
                     q->held - std::min(q->held, q->left), q->left, q->served);
      }
    });
  }
  for (auto& t : threads) t.join();
}

void Manager::on_queue_exit() {
  uint64_t count;
  (void)!::read(queue_exit_fd_.get(), &count, sizeof(count));
  for (auto& [name, e] : entries_) {
    if (e->op.joinable() || e->dev->state() != DeviceState::kLive || e->dev->queues_healthy())
      continue;
    // A live device whose queue thread ended cannot serve that queue's I/O
    // any more: take it down so users see errors, not a hang.
    const std::string reason = e->dev->queue_failure();
    Device* dev = e->dev.get();
    start_op(
        name, [dev, reason] { dev->fail(reason); }, [] {});
  }
}

void Manager::on_storage_resize() {
  uint64_t count;
  (void)!::read(storage_resize_fd_.get(), &count, sizeof(count));
  for (auto& [name, e] : entries_) {
    if (e->op.joinable() || e->dev->state() != DeviceState::kLive) continue;
    const uint64_t from = e->dev->size();
    const uint64_t to = e->dev->storage_size();
    if (to == from || to == e->resize_refused_at) continue;
    resize_to_storage(name, from, to);
  }
}

void Manager::resize_to_storage(const std::string& name, uint64_t from, uint64_t to) {
  Entry& e = *entries_.at(name);
  if (!e.dev->resizable()) {
    e.resize_refused_at = to;
    devlog::warn(name, "device {}: its storage is now {} bytes, the device stays at {}: {}", to,
                 from, Device::kCannotResize);
    return;
  }
  Device* dev = e.dev.get();
  start_op<Result<void>>(
      name, [dev, to] { return dev->resize(to); },
      [this, name, from, to](Result<void> r) {
        if (r) {
          devlog::info(name, "device {}: resized from {} to {} bytes, as its storage", from, to);
          return;
        }
        if (auto it = entries_.find(name); it != entries_.end()) it->second->resize_refused_at = to;
        devlog::warn(name, "device {}: its storage is now {} bytes, the device stays at {}: {}", to,
                     from, r.error().to_string());
      });
}

namespace {

// The spec of a device resized to `bytes`: its size follows, unless it has
// none (a file backend serving its file's own size).
DeviceSpec with_size(DeviceSpec spec, uint64_t bytes) {
  if (spec.backend.size != 0) spec.backend.size = bytes;
  return spec;
}

}  // namespace

std::optional<OpError> Manager::refuse_size(const Entry& e, uint64_t bytes) const {
  // A file spec's size of 0 means its file's size: not a size to check.
  if (bytes == 0)
    return OpError{Failure::kInvalidRequest, "device " + e.spec.name + ": size must be greater than 0"};
  DeviceSpec probe = e.spec;
  probe.backend.size = bytes;
  std::vector<ConfigProblem> problems;
  if (check_device_spec(to_json(probe), "", SpecDefaults{}, problems)) return std::nullopt;
  std::string msg;
  for (const ConfigProblem& p : problems) {
    if (!msg.empty()) msg += "; ";
    msg += p.message;
  }
  return OpError{Failure::kInvalidRequest, "device " + e.spec.name + ": size " + msg};
}

Result<void> Manager::record_size(const DeviceRecord& record, uint64_t bytes) const {
  if (record.spec.backend.size == 0) return {};
  DeviceRecord r = record;
  r.spec = with_size(record.spec, bytes);
  if (state_) {
    if (auto w = state_->save(r); !w) return w.error().wrap("state record");
  }
  if (r.persistent) {
    if (auto w = write_dropin(r.spec); !w) return w.error().wrap("drop-in");
  }
  return {};
}

void Manager::resize(const std::string& name, uint64_t bytes, bool force, AddDone done) {
  auto it = entries_.find(name);
  if (it == entries_.end()) return done(OpError{Failure::kNotFound, "no device named " + name});
  Entry& e = *it->second;
  if (shutting_down_ || handed_over_)
    return done(OpError{Failure::kShuttingDown, "ublkd is shutting down"});
  const DeviceState state = e.dev->state();
  if (e.op.joinable() || state != DeviceState::kLive) {
    return done(OpError{Failure::kBusy, "device " + name + " is busy (" +
                                            std::string(to_string(state)) +
                                            (e.op.joinable() ? ", an operation is under way)"
                                                             : ", not live)")});
  }
  auto refuse = [&](const Error& why) {
    done(OpError{refusal_of(why.code()),
                 "device " + name + ": " + why.message() + "; nothing changed"});
  };
  if (!e.dev->resizable()) return refuse(Error(EOPNOTSUPP, std::string(Device::kCannotResize)));
  // Whether the backend can at all; the data it would drop is looked at on
  // the operation's thread (it reads the storage). A size the spec could
  // not have is explained in the spec's terms.
  const auto supported = e.dev->backend().check_resize(bytes, /*force=*/true);
  if (!supported && supported.error().code() != EINVAL) return refuse(supported.error());
  if (auto refused = refuse_size(e, bytes)) return done(std::move(*refused));
  if (!supported) return refuse(supported.error());
  const uint64_t from = e.dev->size();
  if (bytes == from) return done(snapshot(e));

  Device* dev = e.dev.get();
  const DeviceRecord record{e.spec, dev->dev_id(), e.identity, e.persistent};
  // The size the record and drop-in say now, once the operation wrote them.
  auto recorded = std::make_shared<std::optional<uint64_t>>();
  auto work = [this, dev, bytes, force, record, recorded] {
    return dev->change_size(bytes, force, [&](uint64_t size) {
      auto r = record_size(record, size);
      if (r) *recorded = size;
      return r;
    });
  };
  auto then = [this, name, from, bytes, recorded, done = std::move(done)](Result<void> r) {
    auto it = entries_.find(name);
    if (it == entries_.end()) return done(OpError{Failure::kNotFound, "no device named " + name});
    Entry& e = *it->second;
    e.resizing = false;
    if (*recorded) e.spec = with_size(e.spec, **recorded);
    if (!r) {
      const Failure kind = refusal_of(r.error().code());
      const std::string why = r.error().message();
      if (kind == Failure::kWouldLoseData || kind == Failure::kInvalidRequest)
        devlog::info(name, "device {}: not resized from {} to {} bytes: {}", from, bytes, why);
      else
        devlog::warn(name, "device {}: resize from {} to {} bytes failed: {}", from, bytes, why);
      std::string tail = e.dev->size() == from ? "; nothing changed" : "";
      if (kind == Failure::kWouldLoseData) tail += " (a resize with force drops it)";
      return done(OpError{kind, "device " + name + ": " + why + tail});
    }
    devlog::info(name, "device {}: resized from {} to {} bytes", from, bytes);
    done(snapshot(e));
  };
  e.resizing = true;
  start_op<Result<void>>(name, std::move(work), std::move(then));
}

void Manager::maybe_finish_shutdown() {
  if (!shutting_down_ || ops_running_ > 0) return;
  bool launched = false;
  for (auto& [name, e] : entries_) {
    if (is_terminal(e->dev->state()) || e->dev->state() == DeviceState::kNew) continue;
    Device* dev = e->dev.get();
    const std::string n = name;
    start_op(
        n, [dev] { (void)dev->stop(); },
        [this, n, dev] {
          if (dev->state() == DeviceState::kRemoved) devlog::info(n, "device {} removed");
          // Gone from the system all the same; its record stays for the
          // next ublkd, which waits for the release.
          if (dev->state() == DeviceState::kRemovedPending) {
            devlog::warn(n,
                         "device {} removed from the system; {}; its record stays for the next "
                         "ublkd",
                         held_by_users(*dev));
            watch_release(*entries_.at(n));
          }
        });
    launched = true;
  }
  if (launched) return;
  for (auto it = entries_.begin(); it != entries_.end();) forget(it++);
  changed();
  std::sort(left_behind_.begin(), left_behind_.end());
  left_behind_.erase(std::unique(left_behind_.begin(), left_behind_.end()), left_behind_.end());
  if (auto f = std::exchange(shutdown_done_, nullptr)) f(std::exchange(left_behind_, {}));
}

void Manager::forget(Entries::iterator it) {
  if (it->second->dev->cleanup_failed()) left_behind_.push_back(it->first);
  entries_.erase(it);
}

void Manager::shutdown(ShutdownDone done) {
  shutting_down_ = true;
  shutdown_done_ = std::move(done);
  // A start may wait for its queues and START_DEV up to the start timeout;
  // cut it short instead of letting the shutdown wait that long. The device
  // is then torn down and ends failed, the way any failed start does.
  for (auto& [name, e] : entries_) {
    if (!e->starting || !e->op.joinable()) continue;
    devlog::info(name, "device {}: aborting its start ({})", to_string(e->dev->state()));
    e->dev->abort_start("ublkd is shutting down");
  }
  maybe_finish_shutdown();
}

void Manager::reload(const LoadedConfig& config, std::function<void(ReloadReport)> done) {
  auto report = std::make_shared<ReloadReport>();
  for (const ConfigProblem& p : config.problems) report->problems.push_back(p.to_string());

  std::vector<DeviceSpec> to_add;
  for (const DeviceSpec& spec : config.devices) {
    auto it = entries_.find(spec.name);
    if (it != entries_.end() && !is_terminal(it->second->dev->state())) {
      Entry& e = *it->second;
      e.persistent = true;
      if (!(e.spec == spec)) {
        report->changed.push_back(spec.name);
        devlog::warn(spec.name, "device {}: {} changed; restart the device to apply", spec.source);
      }
      continue;
    }
    if (spec.autostart) to_add.push_back(spec);
  }
  for (auto& [name, e] : entries_) {
    if (!e->persistent || is_terminal(e->dev->state())) continue;
    const std::string& n = name;  // clang before 16 cannot capture a structured binding
    const bool still = std::any_of(config.devices.begin(), config.devices.end(),
                                   [&n](const DeviceSpec& s) { return s.name == n; });
    if (!still) {
      report->orphaned.push_back(name);
      e->persistent = false;
      devlog::warn(name, "device {}: its drop-in is gone; it keeps running until deleted");
    }
  }
  auto all_started = Countdown::start(
      to_add.size(), [report, done = std::move(done)] { done(std::move(*report)); });
  for (const DeviceSpec& spec : to_add) {
    add(spec, false, [report, all_started, name = spec.name](OpResult<DeviceSnapshot> result) {
      if (!result)
        report->failed.emplace_back(name, result.error().message);
      else
        report->started.push_back(name);
      all_started->one_done();
    });
  }
}

DeviceSnapshot Manager::snapshot(const Entry& e) const {
  DeviceSnapshot d;
  d.name = e.spec.name;
  // The state is read first: fields the device sets before it leaves `new`
  // are only read once the state says they are there.
  d.state = e.dev->state();
  static_cast<DeviceShape&>(d) = e.spec;
  d.backend = e.spec.backend;
  d.size = e.dev->size();
  d.persistent = e.persistent;
  d.source = e.persistent ? e.spec.source : std::string();
  if (d.state != DeviceState::kNew && e.dev->dev_id()) {
    d.id = e.dev->dev_id();
    d.queues = e.dev->kernel_info().nr_hw_queues;
    d.queue_depth = e.dev->kernel_info().queue_depth;
    d.kernel_flags = e.dev->kernel_info().flags;
    if (!is_terminal(d.state)) d.block_device = e.dev->block_device();
  }
  if (d.state == DeviceState::kLive) {
    const std::string link = DeviceNames::stable_path(d.name);
    std::error_code ec;
    if (std::filesystem::canonical(link, ec) == d.block_device && !ec) d.stable_path = link;
  }
  if (d.state == DeviceState::kFailed) d.error = e.dev->failure_reason();
  // Only between operations: an operation's thread may be opening the
  // backend.
  if (d.state == DeviceState::kLive && !e.op.joinable()) d.backend_facts = e.dev->backend().facts();
  return d;
}

std::vector<DeviceSnapshot> Manager::list() const {
  std::vector<DeviceSnapshot> out;
  for (const auto& [name, e] : entries_) out.push_back(snapshot(*e));
  return out;
}

OpResult<std::vector<DeviceStats>> Manager::stats(const std::optional<std::string>& name) const {
  std::vector<DeviceStats> out;
  for (const auto& [n, e] : entries_) {
    if (name && n != *name) continue;
    DeviceStats s;
    s.name = n;
    s.state = e->dev->state();
    if (s.state != DeviceState::kNew) s.id = e->dev->dev_id();
    // Other operations replace or tear down the queues as they go.
    if (s.state == DeviceState::kLive && (!e->op.joinable() || e->resizing))
      s.queues = e->dev->queue_stats();
    out.push_back(std::move(s));
  }
  if (name && out.empty()) return OpError{Failure::kNotFound, "no device named " + *name};
  return out;
}

std::optional<DeviceSnapshot> Manager::info(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) return std::nullopt;
  return snapshot(*it->second);
}

std::vector<std::pair<std::string, DeviceState>> Manager::states() const {
  std::vector<std::pair<std::string, DeviceState>> out;
  for (const auto& [name, e] : entries_) out.emplace_back(name, e->dev->state());
  return out;
}

size_t Manager::live_count() const {
  return static_cast<size_t>(std::count_if(entries_.begin(), entries_.end(), [](const auto& kv) {
    return kv.second->dev->state() == DeviceState::kLive;
  }));
}

Result<void> Manager::write_dropin(const DeviceSpec& spec) const {
  namespace fs = std::filesystem;
  const fs::path file = spec.source.empty() ? dropin_path(spec.name) : fs::path(spec.source);
  std::error_code ec;
  fs::create_directories(file.parent_path(), ec);
  if (ec) return Error(ec.value(), "create " + file.parent_path().string());
  DeviceSpec clean = spec;
  clean.source.clear();
  return write_file_atomically(file, to_json(clean).dump(2) + "\n", 0644);
}

}  // namespace ublkd
