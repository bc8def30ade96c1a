// ublkd as a whole: the event loop, the device manager, the admin socket and
// signal handling, wired together. main() parses the command line and hands
// over here.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "admin/protocol.h"
#include "admin/server.h"
#include "config/config_dir.h"
#include "event_loop.h"
#include "manager.h"

namespace ublkd {

struct DaemonOptions {
  std::filesystem::path config_dir;
  std::optional<std::string> socket;  // overrides ublkd.json
  std::filesystem::path state_dir;
  std::optional<std::chrono::milliseconds> start_timeout;  // overrides ublkd.json
};

// The exit status after `ublkctl upgrade`: the devices were left quiesced
// for the next ublkd (ublkd.service restarts on it: RestartForceExitStatus=).
inline constexpr int kExitHandedOver = 75;

// Runs until SIGTERM/SIGINT or an upgrade; returns the process exit code: 0,
// 1 when setup failed or a device may be left in the kernel (its stop or
// cleanup failed), or kExitHandedOver.
int run_daemon(const DaemonOptions& options, const LoadedConfig& config);

// Told when a reload starts and when it has ended (systemd hears of both).
struct ReloadHooks {
  std::function<void()> begin;
  std::function<void()> end;
  // The devices were handed over (`upgrade`, already answered): exit.
  std::function<void()> handed_over;
};

// The admin request dispatcher, exposed for tests: answers `req` through
// `reply`, now or later.
class AdminHandler {
 public:
  AdminHandler(Manager& manager, std::filesystem::path config_dir, SpecDefaults defaults,
               ReloadHooks hooks = {})
      : manager_(manager),
        config_dir_(std::move(config_dir)),
        defaults_(defaults),
        hooks_(std::move(hooks)) {}
  void handle(const admin::Request& req, const admin::Server::Reply& reply);

 private:
  Manager& manager_;
  std::filesystem::path config_dir_;
  SpecDefaults defaults_;
  ReloadHooks hooks_;
};

nlohmann::json to_json(const ReloadReport& r);
admin::AdminError to_admin_error(const OpError& e);

}  // namespace ublkd
