// The daemon's set of devices. Lives on the control thread's event loop:
// every public method is called there, and answers through a callback there.
// Slow work (bringing a device up, taking it down) runs on a short-lived
// thread per operation, so the loop — and with it the admin socket — never
// waits for the kernel. Every state transition is logged once, with the
// device's name.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "backends/backend_type.h"
#include "base/error.h"
#include "config/config_dir.h"
#include "config/device_spec.h"
#include "device/device.h"
#include "device_names.h"
#include "event_loop.h"
#include "op_error.h"
#include "recovery/mem_store.h"
#include "recovery/state_store.h"

namespace ublkd {

struct ManagerOptions {
  std::chrono::milliseconds start_timeout{10'000};
  // DeviceConfig::idle_spin of every device.
  std::chrono::nanoseconds idle_spin{0};
  // DeviceConfig::batch_io of every device.
  bool batch_io = false;
  std::string control_path = ControlDevice::kDefaultPath;
  // Where `persist` writes drop-ins: DIR/devices.d.
  std::filesystem::path config_dir;
  // Test hook (UBLKD_TEST_UNPRIMED_TAG): the device of this name leaves the
  // last tag of queue 0 without a FETCH_REQ, so its START_DEV must time out.
  std::string unprimed_tag_device;
  // Test hook (UBLKD_TEST_CRASH_AT): end the process at once (status 99),
  // as a crash would, at one point of a device's life: "after-add-dev"
  // (ADD_DEV answered, the record not yet completed with the id) or
  // "after-del-dev" (the kernel released the device, its record not yet
  // removed).
  std::string crash_at;
  // Test hook (UBLKD_TEST_NO_IDENTITY): new devices get identity 0, as
  // ublkd's before identities made them.
  bool no_identity = false;
  // Test hook (UBLKD_TEST_SKIP_SYNC): a clean stop does not sync the
  // backends (DeviceConfig::skip_sync_on_stop).
  bool skip_sync = false;
  // STATE_DIR: devices/ holds a record per device for a later recovery
  // (StateStore). Empty: no records are kept.
  std::filesystem::path state_dir;
  // Where mem devices with recovery keep their memory. Null: a plain memfd
  // that dies with the process.
  std::shared_ptr<MemStore> mem_store;
};

// A device as `list` and `info` show it (api.h writes it as JSON). The
// shape is the spec's, except queues and queue_depth, which are what the
// kernel granted once it has the device.
struct DeviceSnapshot : DeviceShape {
  std::string name;
  std::optional<uint32_t> id;
  DeviceState state = DeviceState::kNew;
  BackendSpec backend;
  uint64_t size = 0;
  std::string block_device;
  bool persistent = false;
  std::string source;
  std::string error;
  uint64_t kernel_flags = 0;
  // What the backend learned when it opened (Backend::facts()), while the
  // device is live.
  std::vector<BackendFact> backend_facts;
  // /dev/ublk/by-name/NAME, while udev has made it for this device.
  std::string stable_path;
};

// What a device has served (`stats`): per queue, since its queues started
// in this process; no queues while it is not live.
struct DeviceStats {
  std::string name;
  std::optional<uint32_t> id;
  DeviceState state = DeviceState::kNew;
  std::vector<StatsSnapshot> queues;
};

struct ReloadReport {
  std::vector<std::string> started;
  std::vector<std::pair<std::string, std::string>> failed;  // name, error
  std::vector<std::string> changed;
  std::vector<std::string> orphaned;
  std::vector<std::string> problems;
};

class Manager {
 public:
  using AddDone = std::function<void(OpResult<DeviceSnapshot>)>;
  // The device as it was left: removed, or removed-pending while somebody
  // still holds /dev/ublkbN open.
  using DelDone = std::function<void(OpResult<DeviceSnapshot>)>;

  Manager(EventLoop& loop, ManagerOptions options);
  ~Manager();

  // Opens the control device and reads the kernel's ublk features.
  Result<void> probe();
  uint64_t kernel_features() const { return features_; }
  bool ioctl_encoding() const { return ioctl_encoding_; }

  // Brings a device live; `done` runs on the loop thread when it is live or
  // torn down again. With persist, its drop-in is written once it is live.
  void add(DeviceSpec spec, bool persist, AddDone done);
  // Stops and deletes a device. Unless `force`, only while nobody uses it:
  // a device in use (mounted, held, open) is refused as busy, naming what
  // uses it, and stays live; the kernel decides where it can
  // (Device::stop_if_unused), elsewhere what the system shows
  // (block_device_users). With `force` it goes regardless, its I/O fails,
  // and if somebody still holds it open the kernel keeps its id until they
  // close it: the device stays listed as removed-pending, with its record,
  // until then.
  void remove(const std::string& name, bool force, DelDone done);

  // Makes a live device `bytes` long, storage included (Device::
  // change_size), and its record and drop-in say so. Refuses, changing
  // nothing, a size its spec could not have, a kernel or backend that
  // cannot, and a shrink that would drop written data unless `force`.
  // `done` gets the device as it is afterwards.
  void resize(const std::string& name, uint64_t bytes, bool force, AddDone done);

  // Takes back the devices an earlier ublkd left in the kernel, from their
  // records in the state dir: each is recovered (quiesced ones, see
  // Device::recover) or deleted (those that cannot be), all in parallel; a
  // record whose kernel device turns out to be another device's is stale:
  // retired, and that device left alone. Devices the earlier process had
  // deleted are tracked until the kernel releases them. What an earlier
  // process kept that no record claims is dropped. `done` runs on the loop
  // thread when every device is live or failed.
  void recover_all(std::function<void()> done);

  // Prepares ublkd to exit and leave its devices to the next process (an
  // upgrade): refuses, with the reason, while an operation is under way or
  // if a device could not be recovered (recovery off, or not granted by the
  // kernel). On success returns the names handed over; the records and the
  // memory stay, and from now on the manager refuses new work. The caller
  // then ends the process without stopping the devices.
  OpResult<std::vector<std::string>> hand_over();
  // After hand_over(), as the process's last act: every live device the
  // kernel can quiesce (Device::quiesce) answers what it holds, in
  // parallel, within `budget`; the others go as they are, their requests in
  // flight served again by the next ublkd. Logs what each device did.
  // Blocks the loop thread; the devices are not served afterwards.
  void quiesce_handed_over(std::chrono::milliseconds budget);

  // Brings a drop-in's device live, or answers at once if it is live
  // already (it may have been autostarted): what ublkd@NAME.service needs.
  void up(DeviceSpec spec, AddDone done);

  // Calls `done` once the device is no longer live (or does not exist), or
  // when `timeout` passes with it still live, whichever comes first; on the
  // loop thread. `done` gets the device's snapshot, or nullopt if there is
  // no such device.
  using WatchDone = std::function<void(std::optional<DeviceSnapshot>)>;
  void watch(const std::string& name, std::chrono::milliseconds timeout, WatchDone done);

  std::vector<DeviceSnapshot> list() const;
  // Every device's counters, or the one named (not-found if none is).
  OpResult<std::vector<DeviceStats>> stats(const std::optional<std::string>& name) const;
  std::optional<DeviceSnapshot> info(const std::string& name) const;

  // Applies a freshly loaded configuration: brings up new autostart drop-ins,
  // reports live devices whose spec changed or whose drop-in is gone.
  void reload(const LoadedConfig& config, std::function<void(ReloadReport)> done);

  // Refuses new work, aborts the starts under way, waits for what is under
  // way, stops every device (in parallel, each bounded), then calls done
  // with the names of the devices that may be left in the kernel: those
  // whose stop or cleanup met a problem, whenever that was (each already
  // logged with its reason when its state changed).
  using ShutdownDone = std::function<void(std::vector<std::string> left_behind)>;
  void shutdown(ShutdownDone done);

  size_t live_count() const;
  // Every device, by name, with its state.
  std::vector<std::pair<std::string, DeviceState>> states() const;

  // `fn` runs on the loop thread after a device was added or dropped or may
  // have changed state (several changes may come as one call).
  void on_change(std::function<void()> fn) { on_change_ = std::move(fn); }

 private:
  struct Entry {
    DeviceSpec spec;
    std::unique_ptr<Device> dev;
    bool persistent = false;  // described by a drop-in in devices.d
    bool from_api = false;    // added through the admin API
    uint64_t identity = 0;    // DeviceConfig::identity
    std::thread op;           // the add/remove/fail under way, if any
    bool starting = false;    // that operation is an add
    bool resizing = false;    // that operation is a resize: the queues stay
    // Why the state record could not be written while the device started.
    // Written by the operation's thread, read once it is joined.
    std::optional<Error> record_error;
    // The storage size last found unusable for the device (the kernel
    // cannot resize it): not tried, nor logged, again until it changes.
    uint64_t resize_refused_at = 0;
  };
  using Entries = std::map<std::string, std::unique_ptr<Entry>>;

  // A new entry for `spec`, registered under its name, whose device reopens
  // kept memory (recovery) or creates it.
  Entry& make_entry(const DeviceSpec& spec, bool persistent, uint64_t identity, bool reopen);
  // The device's config for the entry, with the hooks that keep its state
  // record (`record`) up to date.
  DeviceConfig device_config(Entry& e, const DeviceRecord& record, bool reopen);
  // The device of `e` changed state (on the thread of its operation): logs
  // it and keeps the state record in step.
  void on_state(Entry& e, const DeviceRecord& record, DeviceState from, DeviceState to,
                const std::string& reason);
  // add(): why the device cannot be added now, if it cannot.
  std::optional<OpError> refuse_add(const std::string& name, bool persist);
  // add(), on the operation's thread: brings the device live, and with
  // `persist` writes its drop-in.
  OpResult<void> bring_up(Entry& e, bool persist);
  // add(), on the loop thread once bring_up() is done.
  void finish_add(const std::string& name, bool persist, OpResult<void> result, AddDone done);
  // The log lines of a device that just went live.
  void log_live(const Entry& e) const;
  // How a live device is served (ring flags, the backend's notes, zero copy,
  // batched commands), for its live and recovered lines.
  static std::string serving_notes(Device& dev);
  // A recovered device whose backend cannot take the kernel's zero copy
  // (Device::zero_copy_unserved): said once, as an error.
  static void report_unserved(Device& dev, const std::string& name);
  // recover_all(): recovers, or waits for the release of, one recorded
  // device; `done` runs when that is settled.
  void recover_one(const DeviceRecord& r, std::function<void()> done);
  void finish_recovery(const std::string& name, bool stale);
  // Rewrites the entry's record (its spec, id, identity; removed once the
  // device is removed-pending).
  void save_record(const Entry& e);
  // Drops what was kept for a device: its record, its recovery marker, its
  // memory. Safe from any thread.
  void retire(const DeviceSpec& spec);
  // ADD_DEV gave `dev_id` to device `owner`: any other record naming that
  // id describes a device the kernel released, and is retired.
  void retire_records_naming(uint32_t dev_id, const std::string& owner);
  // Records of version 1 (no identity) can only be told apart by age: of
  // those naming one id, all but the newest are stale. Returns the records
  // to act on; the stale ones are retired.
  std::vector<DeviceRecord> drop_ambiguous(std::vector<DeviceRecord> records);
  // A device the kernel deleted but still holds: its record is rewritten
  // (removed, for a removed-pending device) and its release is watched for.
  void watch_release(const Entry& e);
  // Asks the kernel, now and then, whether the devices it holds after their
  // deletion are released yet; a released one's record and memory go.
  void check_releases();
  // ManagerOptions::crash_at.
  void crash_here(std::string_view point) const;
  // Runs `work` on a thread of the entry `name`, then `then` with its result
  // on the loop thread (see finish_op()).
  template <typename T>
  void start_op(const std::string& name, std::function<T()> work, std::function<void(T)> then);
  void start_op(const std::string& name, std::function<void()> work, std::function<void()> then);
  // Drops an entry, remembering it for shutdown's report if its device may
  // be left in the kernel.
  void forget(Entries::iterator it);
  void finish_op(const std::string& name, std::function<void()> then);
  void on_queue_exit();
  // Some backend's storage changed size: each live device whose storage
  // differs from its own size is resized to it where the kernel allows.
  void on_storage_resize();
  void resize_to_storage(const std::string& name, uint64_t from, uint64_t to);
  // resize(): why `bytes` is no size for the device's spec, if it is not.
  std::optional<OpError> refuse_size(const Entry& e, uint64_t bytes) const;
  // resize(), on the operation's thread: writes the record and drop-in of
  // the device at `bytes` (Device::change_size's `record`).
  Result<void> record_size(const DeviceRecord& record, uint64_t bytes) const;
  void maybe_finish_shutdown();
  void changed();
  DeviceSnapshot snapshot(const Entry& e) const;
  // Answers the watches whose device left live or whose time is up.
  void check_watches(bool all);

  struct Watch {
    std::string name;
    std::chrono::steady_clock::time_point deadline;
    WatchDone done;
  };
  std::vector<Watch> watches_;
  bool watch_timer_ = false;
  bool release_timer_ = false;
  // Writes the spec to its drop-in (spec.source), or to a new one in
  // devices.d when it has none.
  Result<void> write_dropin(const DeviceSpec& spec) const;
  std::filesystem::path dropin_path(const std::string& name) const;

  EventLoop& loop_;
  ManagerOptions options_;
  uint64_t features_ = 0;
  bool ioctl_encoding_ = true;
  UniqueFd queue_exit_fd_;
  UniqueFd storage_resize_fd_;
  Entries entries_;
  size_t ops_running_ = 0;
  bool shutting_down_ = false;
  bool handed_over_ = false;
  std::optional<StateStore> state_;
  // STATE_DIR/names, for /dev/ublk/by-name (DeviceNames).
  std::optional<DeviceNames> names_;
  ShutdownDone shutdown_done_;
  // Devices dropped from entries_ whose cleanup failed (see forget()).
  std::vector<std::string> left_behind_;
  std::function<void()> on_change_;
};

}  // namespace ublkd
