// ublkd's logging: where the lines go (a terminal, or the journal with
// structured fields) and how a message says which device it is about.
//
// Messages about a device go through devlog::info/warn/error(name, ...): the
// text reads as before ("device mem0 live at /dev/ublkb0"), and in the
// journal the entry also carries DEVICE=mem0, so `journalctl -u ublkd
// DEVICE=mem0` finds them.
#pragma once

#include <sys/stat.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <spdlog/sinks/sink.h>
#include <spdlog/spdlog.h>

namespace ublkd {

enum class LogTarget { kAuto, kJournal, kConsole };

// "auto", "journal", "console".
std::optional<LogTarget> parse_log_target(std::string_view text);

// Whether the stream described by `st` (fstat of stderr) is the one systemd
// connected to the journal: JOURNAL_STREAM holds its "DEVICE:INODE" in
// decimal (systemd.exec(5)). An empty or malformed value is no match.
bool is_journal_stream(std::string_view journal_stream, const struct stat& st);

// The syslog priority (LOG_ERR, LOG_INFO, ...) of a spdlog level.
int syslog_priority(spdlog::level::level_enum level);

// The journal fields of one message, "NAME=value" each: MESSAGE, PRIORITY,
// SYSLOG_IDENTIFIER=ublkd, and DEVICE when `device` is not empty.
std::vector<std::string> journal_fields(spdlog::level::level_enum level, std::string_view message,
                                        std::string_view device);

// A sink that sends each message to the journal (sd_journal_sendv) with the
// fields above; the device is the one devlog set for the message. If the
// journal refuses a message, the line goes to stderr instead (a journal that
// is not there at all refuses nothing: see setup_logging).
std::shared_ptr<spdlog::sinks::sink> make_journal_sink();

// Installs the default logger for `target` and returns the target chosen:
// kAuto becomes kJournal when stderr is the journal stream, else kConsole;
// kJournal becomes kConsole, with a warning, when journald is not there.
LogTarget setup_logging(LogTarget target, spdlog::level::level_enum level);

namespace devlog {

// The device the message being logged on this thread is about, or empty.
// Valid only while a sink runs inside a devlog call: the logger must stay
// synchronous.
std::string_view current_device();

namespace detail {
class Scope {
 public:
  explicit Scope(std::string_view device);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  std::string_view previous_;
};
}  // namespace detail

// Logs `format` with the device name as its first argument, e.g.
// devlog::log(info, name, "device {} live at {}", path).
template <typename... Args>
void log(spdlog::level::level_enum level, std::string_view device,
         fmt::format_string<std::string_view, Args...> format, Args&&... args) {
  if (!spdlog::should_log(level)) return;
  const detail::Scope scope(device);
  const std::string text =
      fmt::vformat(fmt::string_view(format), fmt::make_format_args(device, args...));
  spdlog::default_logger_raw()->log(level, spdlog::string_view_t(text));
}

template <typename... Args>
void info(std::string_view device, fmt::format_string<std::string_view, Args...> format,
          Args&&... args) {
  log(spdlog::level::info, device, format, std::forward<Args>(args)...);
}

template <typename... Args>
void warn(std::string_view device, fmt::format_string<std::string_view, Args...> format,
          Args&&... args) {
  log(spdlog::level::warn, device, format, std::forward<Args>(args)...);
}

template <typename... Args>
void error(std::string_view device, fmt::format_string<std::string_view, Args...> format,
           Args&&... args) {
  log(spdlog::level::err, device, format, std::forward<Args>(args)...);
}

}  // namespace devlog

}  // namespace ublkd
