// The daemon's own settings, from the optional DIR/ublkd.json:
//
//   { "socket": "/run/ublkd/ublkd.sock", "admin_group": "disk",
//     "log_level": "info", "start_timeout": 10,
//     "default_queues": 4, "default_queue_depth": 128, "idle_spin_us": 200,
//     "batch_io": false }
//
// Every field is optional; a missing file means all defaults.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/wire.h"
#include "config/config_problem.h"
#include "config/device_spec.h"

namespace ublkd {

enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError };

// "trace", "debug", "info", "warn", "error".
std::string_view to_string(LogLevel level);
std::optional<LogLevel> parse_log_level(std::string_view text);

inline constexpr std::chrono::milliseconds kDefaultStartTimeout{10000};
inline constexpr std::string_view kDefaultAdminGroup = "root";
inline constexpr uint32_t kMaxStartTimeoutSeconds = 300;
// Long enough to bridge the gap between two requests of a submitter at
// queue depth 1 on TCG and on real hardware alike (docs/performance.md:
// QD1 p50 62 -> 29 us with 200 against none); a queue that goes idle for
// longer stops spinning after one such wait (lib/queue/idle_poll.h).
inline constexpr std::chrono::microseconds kDefaultIdleSpin{200};
inline constexpr int64_t kMaxIdleSpinMicros = 1000;
// sun_path holds 108 bytes including the terminating NUL.
inline constexpr size_t kMaxSocketPathLength = 107;

struct DaemonConfig {
  std::string socket{kDefaultSocketPath};       // absolute path of the control socket
  std::string admin_group{kDefaultAdminGroup};  // group owning the socket; its members may use it
  LogLevel log_level = LogLevel::kInfo;
  // How long starting one device may take before it is given up; "seconds" in
  // the file, fractions allowed, (0, 300]. Rounded up to whole milliseconds.
  std::chrono::milliseconds start_timeout = kDefaultStartTimeout;
  uint32_t default_queues = default_queue_count();    // 1..64
  uint32_t default_queue_depth = kDefaultQueueDepth;  // 1..4096
  // How long an idle queue thread watches its ring before it sleeps
  // (lib/queue/idle_poll.h); 0..1000 µs, 0 = never.
  std::chrono::microseconds idle_spin = kDefaultIdleSpin;
  // Serve new devices with UBLK_F_BATCH_IO where the kernel offers it
  // (QueueConfig::batch_io) instead of a command per request. Off by
  // default: it measured no faster here, and costs UBLK_F_QUIESCE
  // (docs/performance.md).
  bool batch_io = false;

  SpecDefaults spec_defaults() const { return SpecDefaults{default_queues, default_queue_depth}; }

  bool operator==(const DaemonConfig&) const = default;
};

// Appends every problem in the document to `problems`. Always returns a
// config: fields that are absent or wrong keep their defaults, so that the
// device specs can still be checked against the rest; whether to run with a
// config that had problems is the caller's decision.
DaemonConfig check_daemon_config(std::string_view json_text, std::string_view origin,
                                 std::vector<ConfigProblem>& problems);

}  // namespace ublkd
