#include "log.h"

#include <sys/uio.h>
#include <syslog.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

// Without this, sd_journal_sendv() would record this file and line as
// every message's origin (CODE_FILE=log.cpp), which says nothing.
#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>

namespace ublkd {

namespace {

constexpr std::string_view kIdentifier = "ublkd";
// Where sd_journal_sendv() sends; it drops messages silently when this is
// missing.
constexpr const char* kJournalSocket = "/run/systemd/journal/socket";

thread_local std::string_view tls_device;

bool parse_decimal(std::string_view text, uint64_t& out) {
  if (text.empty()) return false;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

class JournalSink final : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    const std::string_view payload(msg.payload.data(), msg.payload.size());
    const std::vector<std::string> fields =
        journal_fields(msg.level, payload, devlog::current_device());
    std::vector<iovec> iov;
    iov.reserve(fields.size());
    for (const std::string& f : fields) iov.push_back(iovec{const_cast<char*>(f.data()), f.size()});
    if (sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) >= 0) return;
    // A line on stderr beats a message lost.
    std::fprintf(stderr, "ublkd: %.*s\n", static_cast<int>(payload.size()), payload.data());
  }
  void flush_() override {}
};

bool stderr_is_journal() {
  const char* env = std::getenv("JOURNAL_STREAM");
  if (env == nullptr) return false;
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return false;
  return is_journal_stream(env, st);
}

}  // namespace

std::optional<LogTarget> parse_log_target(std::string_view text) {
  if (text == "auto") return LogTarget::kAuto;
  if (text == "journal") return LogTarget::kJournal;
  if (text == "console") return LogTarget::kConsole;
  return std::nullopt;
}

bool is_journal_stream(std::string_view journal_stream, const struct stat& st) {
  const size_t colon = journal_stream.find(':');
  if (colon == std::string_view::npos) return false;
  uint64_t dev = 0;
  uint64_t ino = 0;
  if (!parse_decimal(journal_stream.substr(0, colon), dev) ||
      !parse_decimal(journal_stream.substr(colon + 1), ino))
    return false;
  return dev == static_cast<uint64_t>(st.st_dev) && ino == static_cast<uint64_t>(st.st_ino);
}

int syslog_priority(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug: return LOG_DEBUG;
    case spdlog::level::info: return LOG_INFO;
    case spdlog::level::warn: return LOG_WARNING;
    case spdlog::level::err: return LOG_ERR;
    case spdlog::level::critical: return LOG_CRIT;
    case spdlog::level::off:
    case spdlog::level::n_levels: break;
  }
  return LOG_INFO;
}

std::vector<std::string> journal_fields(spdlog::level::level_enum level, std::string_view message,
                                        std::string_view device) {
  std::vector<std::string> fields;
  fields.push_back("MESSAGE=" + std::string(message));
  fields.push_back("PRIORITY=" + std::to_string(syslog_priority(level)));
  fields.push_back("SYSLOG_IDENTIFIER=" + std::string(kIdentifier));
  if (!device.empty()) fields.push_back("DEVICE=" + std::string(device));
  return fields;
}

std::shared_ptr<spdlog::sinks::sink> make_journal_sink() { return std::make_shared<JournalSink>(); }

LogTarget setup_logging(LogTarget target, spdlog::level::level_enum level) {
  if (target == LogTarget::kAuto)
    target = stderr_is_journal() ? LogTarget::kJournal : LogTarget::kConsole;
  const bool no_journal = target == LogTarget::kJournal && ::access(kJournalSocket, F_OK) != 0;
  if (no_journal) target = LogTarget::kConsole;
  std::shared_ptr<spdlog::logger> logger;
  if (target == LogTarget::kJournal) {
    logger = std::make_shared<spdlog::logger>(std::string(kIdentifier), make_journal_sink());
  } else {
    logger = spdlog::stderr_color_mt(std::string(kIdentifier));
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  }
  spdlog::set_default_logger(logger);
  spdlog::set_level(level);
  if (no_journal)
    spdlog::warn("log target journal: {} is missing (journald not running?); logging to stderr",
                 kJournalSocket);
  return target;
}

namespace devlog {

std::string_view current_device() { return tls_device; }

namespace detail {
Scope::Scope(std::string_view device) : previous_(tls_device) { tls_device = device; }
Scope::~Scope() { tls_device = previous_; }
}  // namespace detail

}  // namespace devlog

}  // namespace ublkd
