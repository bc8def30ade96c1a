#include "daemon.h"

#include <grp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <vector>

#include <spdlog/spdlog.h>

#include "systemd.h"
#include "ublkd_version.h"

namespace ublkd {

namespace {

// How long an upgrade's devices may take to answer what they hold before
// ublkd exits. Bounded so a backend that stopped answering cannot hold up
// the upgrade; what it still holds goes to the next ublkd.
constexpr std::chrono::milliseconds kHandOverQuiesce{5'000};

Result<gid_t> lookup_group(const std::string& name) {
  std::vector<char> buf(16384);
  for (;;) {
    struct group gr {};
    struct group* found = nullptr;
    const int rc = ::getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &found);
    if (rc == ERANGE && buf.size() < (1u << 20)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (rc != 0) return Error(rc, "look up group");
    if (found == nullptr) return Error(ENOENT, "no such group");
    return found->gr_gid;
  }
}

// As a systemd service mem devices keep their memory in its fd store,
// which outlives the process but not `systemctl stop`; elsewhere in the
// state dir, which must then be on tmpfs.
std::shared_ptr<MemStore> choose_mem_store(SystemdFds& passed,
                                           const std::filesystem::path& state_dir) {
  if (std::getenv("NOTIFY_SOCKET") != nullptr) return MemStore::fd_store(std::move(passed.stored));
  if (!passed.stored.empty())
    spdlog::warn("ignoring {} stored fd(s) passed outside systemd", passed.stored.size());
  return MemStore::directory(state_dir / "mem");
}

// Signals are taken through a signalfd; blocking them before any thread
// exists keeps them away from the queue threads.
UniqueFd take_signals() {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  if (pthread_sigmask(SIG_BLOCK, &mask, nullptr) != 0) {
    spdlog::error("cannot block signals");
    return {};
  }
  UniqueFd sfd(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!sfd) spdlog::error("{}", errno_error("signalfd").to_string());
  return sfd;
}

// Pinged from the control loop: if the loop wedges, systemd kills us.
bool start_watchdog(EventLoop& loop, ServiceNotifier& notifier) {
  auto watchdog = watchdog_period();
  if (!watchdog) {
    spdlog::warn("systemd watchdog: {}; not pinging it", watchdog.error().to_string());
    return true;
  }
  if (!*watchdog) return true;
  const auto period = std::chrono::duration_cast<std::chrono::milliseconds>(**watchdog);
  const auto interval = watchdog_ping_interval(**watchdog);
  if (auto r = loop.every(interval, [&notifier] { notifier.watchdog(); }); !r) {
    spdlog::error("systemd watchdog: {}", r.error().to_string());
    return false;
  }
  spdlog::info("systemd watchdog: {} ms, pinged every {} ms", period.count(), interval.count());
  return true;
}

ManagerOptions manager_options(const DaemonOptions& options, const LoadedConfig& config,
                               std::shared_ptr<MemStore> mem_store) {
  ManagerOptions mo;
  mo.start_timeout = options.start_timeout.value_or(config.daemon.start_timeout);
  mo.idle_spin = config.daemon.idle_spin;
  mo.batch_io = config.daemon.batch_io;
  mo.config_dir = options.config_dir;
  mo.state_dir = options.state_dir;
  mo.mem_store = std::move(mem_store);
  if (const char* hook = std::getenv("UBLKD_TEST_UNPRIMED_TAG")) mo.unprimed_tag_device = hook;
  if (const char* hook = std::getenv("UBLKD_TEST_CRASH_AT")) {
    mo.crash_at = hook;
    spdlog::warn("test hook active: ublkd exits at {}", mo.crash_at);
  }
  if (std::getenv("UBLKD_TEST_SKIP_SYNC") != nullptr) {
    mo.skip_sync = true;
    spdlog::warn("test hook active: a clean stop does not sync the backends");
  }
  if (std::getenv("UBLKD_TEST_NO_IDENTITY") != nullptr) {
    mo.no_identity = true;
    spdlog::warn("test hook active: new devices get no identity");
  }
  return mo;
}

bool probe_kernel(Manager& manager) {
  if (auto r = manager.probe(); !r) {
    spdlog::error("{}", r.error().to_string());
    return false;
  }
  spdlog::info("kernel ublk features 0x{:x}: {}; control commands use the {} encoding",
               manager.kernel_features(), describe_features(manager.kernel_features()),
               manager.ioctl_encoding() ? "ioctl" : "legacy");
  return true;
}

// The admin socket's path and group, from the options and ublkd.json.
std::optional<admin::ServerOptions> server_options(const DaemonOptions& options,
                                                   const DaemonConfig& config, std::string& group) {
  admin::ServerOptions so;
  so.socket_path = options.socket.value_or(config.socket);
  group = config.admin_group.empty() ? "root" : config.admin_group;
  // root is gid 0 by definition; looking it up would make /etc/group a
  // requirement even where nobody but root manages devices.
  auto gid = group == "root" ? Result<gid_t>(gid_t{0}) : lookup_group(group);
  if (!gid) {
    spdlog::error("admin_group '{}': {}", group, gid.error().to_string());
    return std::nullopt;
  }
  so.admin_gid = *gid;
  return so;
}

// Listens on the socket systemd passed, or binds one.
bool open_admin_socket(admin::Server& server, UniqueFd inherited_fd, const admin::ServerOptions& so,
                       const std::string& group) {
  if (!inherited_fd) {
    if (auto r = server.listen(); !r) {
      spdlog::error("admin socket: {}", r.error().to_string());
      return false;
    }
    spdlog::info("admin socket {} (group {})", so.socket_path, group);
    return true;
  }
  // systemd owns the socket file, its mode and group (ublkd.socket); who
  // may talk is still decided per connection.
  const int fd = inherited_fd.get();
  const std::string path = unix_socket_path(fd);
  if (auto r = server.adopt(std::move(inherited_fd)); !r) {
    spdlog::error("admin socket from systemd (fd {}): {}", fd, r.error().to_string());
    return false;
  }
  spdlog::info("admin socket from systemd (fd {})", fd);
  if (path != so.socket_path) {
    spdlog::warn("admin socket from systemd is bound to {}, not {}; point clients at it",
                 path.empty() ? "no path" : path, so.socket_path);
  }
  return true;
}

// What a run that got as far as its loop ends with.
int exit_status(bool handed_over, const std::vector<std::string>& left_behind, Manager& manager) {
  if (handed_over) {
    manager.quiesce_handed_over(kHandOverQuiesce);
    // Not a return: unwinding would stop the devices (Manager's and
    // Device's destructors). The kernel quiesces each device as this
    // process goes, holding its I/O for the next ublkd.
    spdlog::info("ublkd exiting: {} device(s) handed over, quiesced until the next ublkd",
                 manager.live_count());
    spdlog::shutdown();
    std::_Exit(kExitHandedOver);
  }
  if (!left_behind.empty()) {
    std::string names;
    for (const auto& n : left_behind) names += (names.empty() ? "" : ", ") + n;
    spdlog::error("ublkd exiting with status 1: {} device(s) not stopped and deleted cleanly: {}",
                  left_behind.size(), names);
    return 1;
  }
  spdlog::info("ublkd exiting");
  return 0;
}

// The part of the daemon that lives on the event loop once everything is
// set up: signals, the shutdown, the start-up of the devices.
class Running {
 public:
  Running(EventLoop& loop, Manager& manager, AdminHandler& handler, ServiceNotifier& notifier)
      : loop_(loop), manager_(manager), handler_(handler), notifier_(notifier) {}

  void watch_signals(int sfd, const std::filesystem::path& config_dir) {
    (void)loop_.add(sfd, EPOLLIN, [this, sfd, config_dir](uint32_t) {
      signalfd_siginfo si{};
      while (::read(sfd, &si, sizeof(si)) == sizeof(si)) {
        if (si.ssi_signo != SIGHUP) {
          begin_shutdown(strsignal(static_cast<int>(si.ssi_signo)));
          continue;
        }
        spdlog::info("SIGHUP: reloading {}", config_dir.string());
        handler_.reload([](Result<ReloadReport> r) {
          if (!r) spdlog::error("reload: {}", r.error().to_string());
        });
      }
    });
  }

  // Devices an earlier ublkd left first, then the drop-ins: a recovered
  // device keeps its name, and reload() leaves a live device of that name
  // alone.
  void start_devices(const LoadedConfig& config) {
    manager_.recover_all([this, &config] {
      if (stopping_) return;
      manager_.reload(config, [this](const ReloadReport&) {
        // Starts cut short by a signal end here too; ublkd is not running then.
        if (stopping_) return;
        spdlog::info("ublkd {} running: {} device(s) live", UBLKD_VERSION, manager_.live_count());
        notifier_.ready();
      });
    });
  }

  // Devices the shutdown may have left in the kernel; each was logged, with
  // its reason, when it entered `failed`.
  const std::vector<std::string>& left_behind() const { return left_behind_; }

 private:
  void begin_shutdown(const char* why) {
    if (stopping_) return;
    stopping_ = true;
    notifier_.stopping();
    spdlog::info("{}: stopping {} device(s)", why, manager_.live_count());
    manager_.shutdown([this](std::vector<std::string> names) {
      left_behind_ = std::move(names);
      loop_.stop();
    });
  }

  EventLoop& loop_;
  Manager& manager_;
  AdminHandler& handler_;
  ServiceNotifier& notifier_;
  bool stopping_ = false;
  std::vector<std::string> left_behind_;
};

}  // namespace

int run_daemon(const DaemonOptions& options, const LoadedConfig& config) {
  // Taking the sockets systemd passed edits the environment, which is only
  // safe while no other thread exists.
  auto passed = fds_from_systemd();
  if (!passed) {
    spdlog::error("fds from systemd: {}", passed.error().message());
    return 1;
  }
  auto state_lock = lock_state_dir(options.state_dir);
  if (!state_lock) {
    spdlog::error("{}", state_lock.error().message());
    return 1;
  }
  std::shared_ptr<MemStore> mem_store = choose_mem_store(*passed, options.state_dir);
  UniqueFd sfd = take_signals();
  if (!sfd) return 1;
  auto loop_r = EventLoop::create();
  if (!loop_r) {
    spdlog::error("{}", loop_r.error().to_string());
    return 1;
  }
  EventLoop& loop = **loop_r;
  ServiceNotifier notifier;
  if (!start_watchdog(loop, notifier)) return 1;

  Manager manager(loop, manager_options(options, config, std::move(mem_store)));
  manager.on_change([&notifier, &manager] { notifier.devices_changed(manager.states()); });
  if (!probe_kernel(manager)) return 1;

  std::string group;
  const auto so = server_options(options, config.daemon, group);
  if (!so) return 1;
  bool handed_over = false;
  ReloadHooks hooks{[&notifier] { notifier.reload_begin(); },
                    [&notifier] { notifier.reload_end(); },
                    [&loop, &handed_over] {
                      handed_over = true;
                      // After this turn of the loop, so the answer is sent.
                      loop.post([&loop] { loop.stop(); });
                    }};
  AdminHandler handler(manager, options.config_dir, config.daemon.spec_defaults(), hooks);
  admin::Server server(loop, *so,
                       [&handler](const admin::Request& req, const admin::Peer&,
                                  admin::Server::Reply reply) { handler.handle(req, reply); });
  if (!open_admin_socket(server, std::move(passed->socket), *so, group)) return 1;

  Running running(loop, manager, handler, notifier);
  running.watch_signals(sfd.get(), options.config_dir);
  for (const ConfigProblem& p : config.problems) spdlog::error("config: {}", p.to_string());
  running.start_devices(config);
  if (auto r = loop.run(); !r) {
    spdlog::error("{}", r.error().to_string());
    return 1;
  }
  return exit_status(handed_over, running.left_behind(), manager);
}

}  // namespace ublkd
