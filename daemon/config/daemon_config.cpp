#include "config/daemon_config.h"

#include <array>
#include <cmath>
#include <utility>

#include "config/json_fields.h"

namespace ublkd {

namespace {

constexpr std::array<std::pair<LogLevel, std::string_view>, 5> kLogLevels = {{
    {LogLevel::kTrace, "trace"},
    {LogLevel::kDebug, "debug"},
    {LogLevel::kInfo, "info"},
    {LogLevel::kWarn, "warn"},
    {LogLevel::kError, "error"},
}};

void read_fields(config::FieldReader& reader, const nlohmann::json& doc, DaemonConfig& config) {
  reader.reject_unknown_keys(doc, "",
                             {"socket", "admin_group", "log_level", "start_timeout",
                              "default_queues", "default_queue_depth", "idle_spin_us",
                              "batch_io"});

  if (auto socket = reader.string(doc, "", "socket", false)) {
    const std::string shown = config::dump_value(nlohmann::json(*socket));
    // A relative path would depend on the daemon's working directory.
    if (socket->empty() || socket->front() != '/') {
      reader.problem("socket", "must be an absolute path, got " + shown);
    } else if (socket->size() > kMaxSocketPathLength) {
      reader.problem("socket", "path " + shown + " is longer than " +
                                   std::to_string(kMaxSocketPathLength) + " bytes");
    } else {
      config.socket = std::move(*socket);
    }
  }

  // Whether the group exists is checked when the socket is created: it may
  // be created after the configuration is written.
  if (auto group = reader.string(doc, "", "admin_group", false)) {
    if (group->empty()) {
      reader.problem("admin_group", "must not be empty, got \"\"");
    } else {
      config.admin_group = std::move(*group);
    }
  }

  if (auto level = reader.string(doc, "", "log_level", false)) {
    if (std::optional<LogLevel> parsed = parse_log_level(*level)) {
      config.log_level = *parsed;
    } else {
      reader.problem("log_level", "unknown log level " +
                                      config::dump_value(nlohmann::json(*level)) +
                                      " (expected trace, debug, info, warn or error)");
    }
  }

  if (auto seconds =
          reader.positive_number(doc, "", "start_timeout", false, kMaxStartTimeoutSeconds)) {
    config.start_timeout =
        std::chrono::milliseconds(static_cast<int64_t>(std::ceil(*seconds * 1000.0)));
  }

  if (auto queues = reader.integer(doc, "", "default_queues", false, 1, kMaxQueues)) {
    config.default_queues = static_cast<uint32_t>(*queues);
  }
  if (auto depth = reader.integer(doc, "", "default_queue_depth", false, 1, kMaxQueueDepth)) {
    config.default_queue_depth = static_cast<uint32_t>(*depth);
  }
  if (auto spin = reader.integer(doc, "", "idle_spin_us", false, 0, kMaxIdleSpinMicros)) {
    config.idle_spin = std::chrono::microseconds(*spin);
  }
  if (auto batch = reader.boolean(doc, "", "batch_io", false)) config.batch_io = *batch;
}

}  // namespace

std::string_view to_string(LogLevel level) {
  for (const auto& [l, name] : kLogLevels) {
    if (l == level) return name;
  }
  return "unknown";
}

std::optional<LogLevel> parse_log_level(std::string_view text) {
  for (const auto& [level, name] : kLogLevels) {
    if (name == text) return level;
  }
  return std::nullopt;
}

DaemonConfig check_daemon_config(std::string_view json_text, std::string_view origin,
                                 std::vector<ConfigProblem>& problems) {
  DaemonConfig config;
  config::FieldReader reader(origin, problems);
  std::optional<nlohmann::json> doc = reader.parse(json_text);
  if (!doc) return config;
  try {
    if (reader.expect_object(*doc, "")) read_fields(reader, *doc, config);
  } catch (const nlohmann::json::exception& e) {
    // Backstop only: the readers check types before every access.
    reader.problem("", std::string("internal error while checking the configuration: ") + e.what());
  }
  return config;
}

}  // namespace ublkd
