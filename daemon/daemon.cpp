#include "daemon.h"

#include <grp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include <spdlog/spdlog.h>

#include "systemd.h"
#include "ublkd_version.h"

namespace ublkd {

using admin::AdminError;
using admin::Request;
using nlohmann::json;
namespace code = admin::code;

AdminError to_admin_error(const OpError& e) {
  switch (e.kind) {
    case Failure::kInvalidSpec: return {code::kInvalidSpec, e.message};
    case Failure::kExists: return {code::kExists, e.message};
    case Failure::kNotFound: return {code::kNotFound, e.message};
    case Failure::kBusy: return {code::kBusy, e.message};
    case Failure::kBackend: return {code::kBackendError, e.message};
    case Failure::kKernel: return {code::kKernelError, e.message};
    case Failure::kTimeout: return {code::kTimeout, e.message};
    case Failure::kIo: return {code::kIoError, e.message};
    case Failure::kShuttingDown: return {code::kShuttingDown, e.message};
  }
  return {code::kInternal, e.message};
}

json to_json(const ReloadReport& r) {
  json failed = json::array();
  for (const auto& [name, err] : r.failed) failed.push_back({{"name", name}, {"error", err}});
  json changed = json::array();
  for (const auto& name : r.changed)
    changed.push_back({{"name", name}, {"message", "spec changed; restart the device to apply"}});
  return {{"started", r.started},
          {"failed", failed},
          {"changed", changed},
          {"orphaned", r.orphaned},
          {"problems", r.problems}};
}

namespace {

json features_json(uint64_t value, bool ioctl) {
  json known = json::array();
  json unknown = json::array();
  for (unsigned bit = 0; bit < 64; ++bit) {
    if ((value & (1ull << bit)) == 0) continue;
    if (bit < std::size(uapi::kFeatureNames))
      known.push_back({{"bit", bit}, {"name", uapi::kFeatureNames[bit]}});
    else
      unknown.push_back(bit);
  }
  char hex[32];
  std::snprintf(hex, sizeof(hex), "0x%llx", static_cast<unsigned long long>(value));
  return {{"value", value},
          {"hex", hex},
          {"known", known},
          {"unknown_bits", unknown},
          {"ioctl_encoding", ioctl}};
}

json flag_names(uint64_t flags) {
  json names = json::array();
  for (unsigned bit = 0; bit < 64; ++bit) {
    if ((flags & (1ull << bit)) == 0) continue;
    names.push_back(bit < std::size(uapi::kFeatureNames) ? std::string(uapi::kFeatureNames[bit])
                                                         : "bit" + std::to_string(bit));
  }
  return names;
}

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

void log_reload(const ReloadReport& r) {
  for (const auto& p : r.problems) spdlog::error("config: {}", p);
  spdlog::info("reload: {} started, {} failed, {} changed, {} orphaned, {} problems",
               r.started.size(), r.failed.size(), r.changed.size(), r.orphaned.size(),
               r.problems.size());
}

}  // namespace

void AdminHandler::handle(const Request& req, const admin::Server::Reply& reply) {
  const auto& id = req.id;
  auto fail = [&](const AdminError& e) { reply(admin::error_response(id, e)); };
  auto ok = [&](json result) { reply(admin::ok_response(id, std::move(result))); };

  if (req.op == "version") {
    if (auto e = admin::check_fields(req, {})) return fail(*e);
    return ok({{"version", UBLKD_VERSION}, {"api", admin::kApiVersion}});
  }
  if (req.op == "list") {
    if (auto e = admin::check_fields(req, {})) return fail(*e);
    json devices = json::array();
    for (const auto& d : manager_.list()) devices.push_back(to_json(d));
    return ok({{"devices", devices}});
  }
  if (req.op == "info") {
    if (auto e = admin::check_fields(req, {"name"}, {"name"})) return fail(*e);
    auto name = admin::string_field(req, "name");
    if (auto* e = std::get_if<AdminError>(&name)) return fail(*e);
    auto d = manager_.info(std::get<std::string>(name));
    if (!d) return fail({code::kNotFound, "no device named " + std::get<std::string>(name)});
    json j = to_json(*d);
    j["kernel_flags"] = d->kernel_flags;
    j["kernel_flag_names"] = flag_names(d->kernel_flags);
    return ok(std::move(j));
  }
  if (req.op == "features") {
    if (auto e = admin::check_fields(req, {})) return fail(*e);
    return ok(features_json(manager_.kernel_features(), manager_.ioctl_encoding()));
  }
  if (req.op == "del") {
    if (auto e = admin::check_fields(req, {"name"}, {"name"})) return fail(*e);
    auto name = admin::string_field(req, "name");
    if (auto* e = std::get_if<AdminError>(&name)) return fail(*e);
    const std::string n = std::get<std::string>(name);
    return manager_.remove(n, [reply, id, n](auto result) {
      if (auto* err = std::get_if<OpError>(&result))
        return reply(admin::error_response(id, to_admin_error(*err)));
      const auto& d = std::get<DeviceSnapshot>(result);
      json r = {{"name", n}, {"state", std::string(to_string(d.state))}};
      if (d.state == DeviceState::kRemovedPending) r["id"] = *d.id;
      reply(admin::ok_response(id, std::move(r)));
    });
  }
  if (req.op == "add") {
    if (auto e = admin::check_fields(req, {"spec", "persist"}, {"spec"})) return fail(*e);
    const json& spec_doc = req.doc["spec"];
    if (!spec_doc.is_object()) return fail({code::kInvalidRequest, "\"spec\" must be an object"});
    bool persist = false;
    if (auto it = req.doc.find("persist"); it != req.doc.end()) {
      if (!it->is_boolean())
        return fail({code::kInvalidRequest, "\"persist\" must be a boolean"});
      persist = it->get<bool>();
    }
    std::vector<ConfigProblem> problems;
    auto spec = check_device_spec(spec_doc, "", defaults_, problems);
    if (!spec) {
      // Each problem names its field as a path inside the request.
      std::string msg;
      for (const auto& p : problems) {
        if (!msg.empty()) msg += "; ";
        msg += (p.field.empty() ? "spec" : "spec." + p.field) + ": " + p.message;
      }
      return fail({code::kInvalidSpec, msg});
    }
    return manager_.add(*spec, persist, [reply, id](auto result) {
      if (auto* err = std::get_if<OpError>(&result))
        return reply(admin::error_response(id, to_admin_error(*err)));
      reply(admin::ok_response(id, to_json(std::get<DeviceSnapshot>(result))));
    });
  }
  if (req.op == "up") {
    if (auto e = admin::check_fields(req, {"name"}, {"name"})) return fail(*e);
    auto name = admin::string_field(req, "name");
    if (auto* e = std::get_if<AdminError>(&name)) return fail(*e);
    const std::string n = std::get<std::string>(name);
    auto loaded = load_config_dir(config_dir_);
    if (!loaded) return fail({code::kIoError, loaded.error().to_string()});
    for (const DeviceSpec& spec : loaded->devices) {
      if (spec.name != n) continue;
      return manager_.up(spec, [reply, id](auto result) {
        if (auto* err = std::get_if<OpError>(&result))
          return reply(admin::error_response(id, to_admin_error(*err)));
        reply(admin::ok_response(id, to_json(std::get<DeviceSnapshot>(result))));
      });
    }
    // Not among the valid specs: the file may be there but wrong.
    const std::string file = (config_dir_ / std::string(kDevicesDir) / (n + ".json")).string();
    std::string msg;
    for (const ConfigProblem& p : loaded->problems) {
      if (p.origin != file) continue;
      if (!msg.empty()) msg += "; ";
      msg += p.to_string();
    }
    if (!msg.empty()) return fail({code::kInvalidSpec, msg});
    return fail({code::kNotFound, "no drop-in describes a device named " + n + " (looked in " +
                                      (config_dir_ / std::string(kDevicesDir)).string() + ")"});
  }
  if (req.op == "watch") {
    if (auto e = admin::check_fields(req, {"name", "timeout_ms"}, {"name"})) return fail(*e);
    auto name = admin::string_field(req, "name");
    if (auto* e = std::get_if<AdminError>(&name)) return fail(*e);
    const std::string n = std::get<std::string>(name);
    int64_t timeout_ms = 30'000;
    if (auto it = req.doc.find("timeout_ms"); it != req.doc.end()) {
      if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > 600'000)
        return fail({code::kInvalidRequest, "\"timeout_ms\" must be an integer from 0 to 600000"});
      timeout_ms = it->get<int64_t>();
    }
    return manager_.watch(n, std::chrono::milliseconds(timeout_ms),
                          [reply, id, n](std::optional<DeviceSnapshot> d) {
                            json r = {{"name", n},
                                      {"state", d ? std::string(to_string(d->state)) : "absent"},
                                      {"live", d && d->state == DeviceState::kLive}};
                            if (d && d->state == DeviceState::kFailed) r["error"] = d->error;
                            reply(admin::ok_response(id, std::move(r)));
                          });
  }
  if (req.op == "upgrade") {
    if (auto e = admin::check_fields(req, {})) return fail(*e);
    auto r = manager_.hand_over();
    if (auto* err = std::get_if<OpError>(&r)) return fail(to_admin_error(*err));
    const auto& names = std::get<std::vector<std::string>>(r);
    ok({{"handed_over", names}});
    if (hooks_.handed_over) hooks_.handed_over();
    return;
  }
  if (req.op == "reload") {
    if (auto e = admin::check_fields(req, {})) return fail(*e);
    if (hooks_.begin) hooks_.begin();
    auto loaded = load_config_dir(config_dir_);
    if (!loaded) {
      if (hooks_.end) hooks_.end();
      return fail({code::kIoError, loaded.error().to_string()});
    }
    return manager_.reload(*loaded, [reply, id, end = hooks_.end](ReloadReport r) {
      log_reload(r);
      if (end) end();
      reply(admin::ok_response(id, to_json(r)));
    });
  }
  fail({code::kUnknownOp, "unknown op \"" + req.op +
                              "\" (known: add, del, list, info, up, watch, features, reload, upgrade, "
                              "version)"});
}

int run_daemon(const DaemonOptions& options, const LoadedConfig& config) {
  // Taking the sockets systemd passed edits the environment, which is only
  // safe while no other thread exists.
  auto passed = fds_from_systemd();
  if (!passed) {
    spdlog::error("fds from systemd: {}", passed.error().message());
    return 1;
  }
  UniqueFd inherited_fd = std::move(passed->socket);
  auto state_lock = lock_state_dir(options.state_dir);
  if (!state_lock) {
    spdlog::error("{}", state_lock.error().message());
    return 1;
  }
  // As a systemd service mem devices keep their memory in its fd store,
  // which outlives the process but not `systemctl stop`; elsewhere in the
  // state dir, which must then be on tmpfs.
  std::shared_ptr<MemStore> mem_store;
  if (std::getenv("NOTIFY_SOCKET") != nullptr) {
    mem_store = MemStore::fd_store(std::move(passed->stored));
  } else {
    if (!passed->stored.empty())
      spdlog::warn("ignoring {} stored fd(s) passed outside systemd", passed->stored.size());
    mem_store = MemStore::directory(options.state_dir / "mem");
  }

  // Signals are taken through a signalfd; blocking them before any thread
  // exists keeps them away from the queue threads.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  if (pthread_sigmask(SIG_BLOCK, &mask, nullptr) != 0) {
    spdlog::error("cannot block signals");
    return 1;
  }
  UniqueFd sfd(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!sfd) {
    spdlog::error("{}", errno_error("signalfd").to_string());
    return 1;
  }
  auto loop_r = EventLoop::create();
  if (!loop_r) {
    spdlog::error("{}", loop_r.error().to_string());
    return 1;
  }
  EventLoop& loop = **loop_r;

  ServiceNotifier notifier;
  auto watchdog = watchdog_period();
  if (!watchdog) {
    spdlog::warn("systemd watchdog: {}; not pinging it", watchdog.error().to_string());
  } else if (*watchdog) {
    // Pinged from the control loop: if the loop wedges, systemd kills us.
    const auto period = std::chrono::duration_cast<std::chrono::milliseconds>(**watchdog);
    const auto interval = watchdog_ping_interval(**watchdog);
    if (auto r = loop.every(interval, [&notifier] { notifier.watchdog(); }); !r) {
      spdlog::error("systemd watchdog: {}", r.error().to_string());
      return 1;
    }
    spdlog::info("systemd watchdog: {} ms, pinged every {} ms", period.count(), interval.count());
  }

  ManagerOptions mo;
  mo.start_timeout = options.start_timeout.value_or(config.daemon.start_timeout);
  mo.idle_spin = config.daemon.idle_spin;
  mo.config_dir = options.config_dir;
  mo.state_dir = options.state_dir;
  mo.mem_store = mem_store;
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
  Manager manager(loop, mo);
  manager.on_change([&notifier, &manager] { notifier.devices_changed(manager.states()); });
  if (auto r = manager.probe(); !r) {
    spdlog::error("{}", r.error().to_string());
    return 1;
  }

  admin::ServerOptions so;
  so.socket_path = options.socket.value_or(config.daemon.socket);
  const std::string group = config.daemon.admin_group.empty() ? "root" : config.daemon.admin_group;
  // root is gid 0 by definition; looking it up would make /etc/group a
  // requirement even where nobody but root manages devices.
  auto gid = group == "root" ? Result<gid_t>(gid_t{0}) : lookup_group(group);
  if (!gid) {
    spdlog::error("admin_group '{}': {}", group, gid.error().to_string());
    return 1;
  }
  so.admin_gid = *gid;
  bool handed_over = false;
  ReloadHooks hooks{[&notifier] { notifier.reload_begin(); },
                    [&notifier] { notifier.reload_end(); },
                    [&loop, &handed_over] {
                      handed_over = true;
                      // After this turn of the loop, so the answer is sent.
                      loop.post([&loop] { loop.stop(); });
                    }};
  AdminHandler handler(manager, options.config_dir, config.daemon.spec_defaults(), hooks);
  admin::Server server(loop, so, [&handler](const admin::Request& req, const admin::Peer&,
                                            admin::Server::Reply reply) {
    handler.handle(req, reply);
  });
  if (inherited_fd) {
    // systemd owns the socket file, its mode and group (ublkd.socket); who
    // may talk is still decided per connection.
    const int fd = inherited_fd.get();
    const std::string path = unix_socket_path(fd);
    if (auto r = server.adopt(std::move(inherited_fd)); !r) {
      spdlog::error("admin socket from systemd (fd {}): {}", fd, r.error().to_string());
      return 1;
    }
    spdlog::info("admin socket from systemd (fd {})", fd);
    if (path != so.socket_path) {
      spdlog::warn("admin socket from systemd is bound to {}, not {}; point clients at it",
                   path.empty() ? "no path" : path, so.socket_path);
    }
  } else {
    if (auto r = server.listen(); !r) {
      spdlog::error("admin socket: {}", r.error().to_string());
      return 1;
    }
    spdlog::info("admin socket {} (group {})", so.socket_path, group);
  }

  bool stopping = false;
  // Devices the shutdown may have left in the kernel; each was logged, with
  // its reason, when it entered `failed`.
  std::vector<std::string> left_behind;
  auto begin_shutdown = [&](const char* why) {
    if (stopping) return;
    stopping = true;
    notifier.stopping();
    spdlog::info("{}: stopping {} device(s)", why, manager.live_count());
    manager.shutdown([&loop, &left_behind](std::vector<std::string> names) {
      left_behind = std::move(names);
      loop.stop();
    });
  };
  (void)loop.add(sfd.get(), EPOLLIN, [&](uint32_t) {
    signalfd_siginfo si{};
    while (::read(sfd.get(), &si, sizeof(si)) == sizeof(si)) {
      if (si.ssi_signo == SIGHUP) {
        spdlog::info("SIGHUP: reloading {}", options.config_dir.string());
        notifier.reload_begin();
        auto loaded = load_config_dir(options.config_dir);
        if (!loaded) {
          spdlog::error("reload: {}", loaded.error().to_string());
          notifier.reload_end();
          continue;
        }
        manager.reload(*loaded, [&notifier](const ReloadReport& r) {
          log_reload(r);
          notifier.reload_end();
        });
        continue;
      }
      begin_shutdown(strsignal(static_cast<int>(si.ssi_signo)));
    }
  });

  for (const ConfigProblem& p : config.problems) spdlog::error("config: {}", p.to_string());
  // Devices an earlier ublkd left first, then the drop-ins: a recovered
  // device keeps its name, and reload() leaves a live device of that name
  // alone.
  manager.recover_all([&manager, &stopping, &notifier, &config] {
    if (stopping) return;
    manager.reload(config, [&manager, &stopping, &notifier](const ReloadReport&) {
      // Starts cut short by a signal end here too; ublkd is not running then.
      if (stopping) return;
      spdlog::info("ublkd {} running: {} device(s) live", UBLKD_VERSION, manager.live_count());
      notifier.ready();
    });
  });

  if (auto r = loop.run(); !r) {
    spdlog::error("{}", r.error().to_string());
    return 1;
  }
  if (handed_over) {
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

}  // namespace ublkd
