// ublkd as a whole: the event loop, the device manager, the admin socket and
// signal handling, wired together. main() parses the command line and hands
// over here.
#pragma once

#include <chrono>
#include <filesystem>
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

// Runs until SIGTERM/SIGINT; returns the process exit code: 0, or 1 when
// setup failed or a device may be left in the kernel (its stop or cleanup
// failed).
int run_daemon(const DaemonOptions& options, const LoadedConfig& config);

// The admin request dispatcher, exposed for tests: answers `req` through
// `reply`, now or later.
class AdminHandler {
 public:
  AdminHandler(Manager& manager, std::filesystem::path config_dir, SpecDefaults defaults)
      : manager_(manager), config_dir_(std::move(config_dir)), defaults_(defaults) {}
  void handle(const admin::Request& req, const admin::Server::Reply& reply);

 private:
  Manager& manager_;
  std::filesystem::path config_dir_;
  SpecDefaults defaults_;
};

nlohmann::json to_json(const ReloadReport& r);
admin::AdminError to_admin_error(const OpError& e);

}  // namespace ublkd
