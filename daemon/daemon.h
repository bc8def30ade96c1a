// ublkd as a whole: the event loop, the device manager, the admin socket and
// signal handling, wired together; the admin API itself is api.h. main()
// parses the command line and hands over here.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "api.h"
#include "config/config_dir.h"

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

}  // namespace ublkd
