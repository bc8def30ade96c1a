// The configuration directory (by default /etc/ublkd):
//
//   DIR/ublkd.json          optional daemon settings (daemon_config.h)
//   DIR/devices.d/*.json    one device spec per file (device_spec.h)
//
// Loading never stops at the first mistake: every problem in every file is
// collected, valid drop-ins are kept and broken ones are skipped, so one bad
// file does not take the other devices down with it.
#pragma once

#include <filesystem>
#include <string_view>
#include <vector>

#include "base/error.h"
#include "config/config_problem.h"
#include "config/daemon_config.h"
#include "config/device_spec.h"

namespace ublkd {

inline constexpr std::string_view kDaemonConfigFile = "ublkd.json";
inline constexpr std::string_view kDevicesDir = "devices.d";
// Far larger than any sensible spec; stops a stray file from being read whole.
inline constexpr size_t kMaxConfigFileSize = 1 << 20;

struct LoadedConfig {
  // Defaults for whatever ublkd.json does not set or sets wrongly.
  DaemonConfig daemon;
  // False when ublkd.json exists but has problems. Its security-relevant
  // settings (socket, admin_group) may then be defaults rather than what the
  // administrator meant, so the daemon should not start on it.
  bool daemon_config_ok = true;
  // The valid specs, in lexical order of their file names.
  std::vector<DeviceSpec> devices;
  // Everything wrong: ublkd.json first, then devices.d file by file.
  std::vector<ConfigProblem> problems;

  bool ok() const { return problems.empty(); }
};

// Reads DIR as described above. Files in devices.d are taken in lexical
// (byte) order of their names; hidden files and names not ending in ".json"
// are ignored, and a missing devices.d is an empty set. A device name already
// defined by an earlier file is a problem and the later file is skipped.
// The only error is a DIR that does not exist or is not a directory.
Result<LoadedConfig> load_config_dir(const std::filesystem::path& dir);

}  // namespace ublkd
