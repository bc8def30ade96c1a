// What ublkd tells systemd and takes from it, through libsystemd: readiness,
// reload and shutdown notifications with a one-line STATUS, watchdog pings,
// and the admin socket when ublkd.socket passes it. Outside systemd
// (no NOTIFY_SOCKET, no LISTEN_FDS, no WATCHDOG_USEC) all of it is inert.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/error.h"
#include "base/unique_fd.h"
#include "device/state_machine.h"

namespace ublkd {

// Every device the manager knows, by name, with its state.
using DeviceStates = std::vector<std::pair<std::string, DeviceState>>;

enum class ServicePhase { kRunning, kReloading, kStopping };

// The STATUS= line: "3 devices live", "2 devices live, 1 failed (disk1)",
// "starting 2 devices", "reloading: 1 device live, starting 1 device",
// "shutting down: stopping 2 devices". Failed devices are named (the first
// few; then "..."). Live devices are counted unless the count is 0 while
// others start or stop.
std::string status_text(const DeviceStates& devices, ServicePhase phase);

// Sends sd_notify messages and decides which are due. Runs on the control
// thread. Outside systemd sd_notify does nothing, and neither does this.
class ServiceNotifier {
 public:
  // Sends one notification ("READY=1\nSTATUS=..."); the default is sd_notify.
  using Send = std::function<void(const std::string& message)>;

  explicit ServiceNotifier(Send send = {});

  // The devices changed: a new STATUS= if its text changed.
  void devices_changed(DeviceStates devices);
  // Start-up is over (every autostart device is live, or failed and torn
  // down): READY=1.
  void ready();
  // A reload (SIGHUP or the admin `reload` op) starts or ends. Overlapping
  // reloads make one RELOADING=1 ... READY=1 pair; reloads before ready()
  // make none.
  void reload_begin();
  void reload_end();
  // Shutdown starts: STOPPING=1. Only STATUS= follows.
  void stopping();
  // WATCHDOG=1.
  void watchdog();

  const std::string& status() const { return status_; }

 private:
  ServicePhase phase() const;
  // Sends `fields` (may be empty) with STATUS= when the status changed or
  // fields are given.
  void send(std::string fields);

  Send send_;
  DeviceStates devices_;
  std::string status_;
  bool ready_ = false;
  bool stopping_ = false;
  int reloads_ = 0;
  bool reloading_sent_ = false;
};

// The admin socket systemd passed, given what sd_listen_fds() returned
// (`count`, fds from `first_fd` on): nullopt when it passed none (bind the
// socket ourselves), the fd when it passed exactly one listening AF_UNIX
// SOCK_STREAM socket, and an error saying what was passed otherwise. Every
// error's message explains itself.
Result<std::optional<int>> check_listen_fds(int count, int first_fd);

// What systemd passes when it starts ublkd: the admin socket (ublkd.socket)
// and the memfds an earlier ublkd parked in the fd store, by FDNAME.
inline constexpr const char* kStoredMemPrefix = "mem-";
struct SystemdFds {
  UniqueFd socket;                          // invalid when none was passed
  std::map<std::string, UniqueFd> stored;  // names starting with kStoredMemPrefix
};

// Sorts `count` fds from `first_fd` on by their names (LISTEN_FDNAMES):
// stored memory, and at most one listening AF_UNIX SOCK_STREAM socket
// (check_listen_fds()); anything else is an error naming the fds, which are
// then closed.
Result<SystemdFds> split_systemd_fds(int count, int first_fd,
                                     const std::vector<std::string>& names);

// split_systemd_fds() on what systemd passed. Call before any thread starts:
// it removes LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES from the environment.
Result<SystemdFds> fds_from_systemd();

// The path a unix socket is bound to, or "" if none can be told.
std::string unix_socket_path(int fd);

// The watchdog period systemd wants pings within (WatchdogSec=), or nullopt
// when it wants none.
Result<std::optional<std::chrono::microseconds>> watchdog_period();

// How often to ping for a watchdog period: half of it, so a ping that comes
// a little late is still in time; at least 1 ms.
std::chrono::milliseconds watchdog_ping_interval(std::chrono::microseconds period);

}  // namespace ublkd
