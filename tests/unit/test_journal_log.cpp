// The journal promises of "Under systemd" in docs/configuration.md: each
// entry's fields (PRIORITY from the level, SYSLOG_IDENTIFIER, DEVICE= for a
// device's messages, whose text stays as on the console), how ublkd tells
// that its stderr is the journal (JOURNAL_STREAM), and --log-target's values.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include "base/unique_fd.h"
#include "log.h"

using namespace ublkd;

TEST_CASE("journal priorities follow syslog's", "[log][journal]") {
  CHECK(syslog_priority(spdlog::level::trace) == LOG_DEBUG);
  CHECK(syslog_priority(spdlog::level::debug) == LOG_DEBUG);
  CHECK(syslog_priority(spdlog::level::info) == LOG_INFO);
  CHECK(syslog_priority(spdlog::level::warn) == LOG_WARNING);
  CHECK(syslog_priority(spdlog::level::err) == LOG_ERR);
  CHECK(syslog_priority(spdlog::level::critical) == LOG_CRIT);
}

TEST_CASE("a journal entry carries MESSAGE, PRIORITY, SYSLOG_IDENTIFIER and DEVICE",
          "[log][journal]") {
  CHECK(journal_fields(spdlog::level::info, "device mem0 live at /dev/ublkb0", "mem0") ==
        std::vector<std::string>{"MESSAGE=device mem0 live at /dev/ublkb0", "PRIORITY=6",
                                 "SYSLOG_IDENTIFIER=ublkd", "DEVICE=mem0"});
  CHECK(journal_fields(spdlog::level::err, "admin socket: bind: Permission denied", "") ==
        std::vector<std::string>{"MESSAGE=admin socket: bind: Permission denied", "PRIORITY=3",
                                 "SYSLOG_IDENTIFIER=ublkd"});
}

namespace {

// Records what a sink sees: the text and the device devlog named.
class RecordingSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::vector<std::pair<std::string, std::string>> seen;

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    seen.emplace_back(std::string(msg.payload.data(), msg.payload.size()),
                      std::string(devlog::current_device()));
  }
  void flush_() override {}
};

class DefaultLoggerSwap {
 public:
  explicit DefaultLoggerSwap(std::shared_ptr<spdlog::logger> l)
      : old_(spdlog::default_logger()), old_level_(spdlog::get_level()) {
    spdlog::set_default_logger(std::move(l));
    spdlog::set_level(spdlog::level::info);
  }
  ~DefaultLoggerSwap() {
    spdlog::set_default_logger(old_);
    spdlog::set_level(old_level_);
  }

 private:
  std::shared_ptr<spdlog::logger> old_;
  spdlog::level::level_enum old_level_;
};

}  // namespace

TEST_CASE("devlog names the device for the sink and keeps the text as it was", "[log][journal]") {
  auto sink = std::make_shared<RecordingSink>();
  DefaultLoggerSwap swap(std::make_shared<spdlog::logger>("devlog-test", sink));

  const std::string name = "mem0";
  devlog::info(name, "device {} live at {}", "/dev/ublkb0");
  devlog::error(name, "device {}: state {} -> failed: {}", "added", "ADD_DEV: No such device");
  devlog::warn("disk1", "{1}", "device disk1: persist: no space");
  spdlog::info("ublkd running: {} device(s) live", 1);
  spdlog::debug("not shown");

  CHECK(sink->seen ==
        std::vector<std::pair<std::string, std::string>>{
            {"device mem0 live at /dev/ublkb0", "mem0"},
            {"device mem0: state added -> failed: ADD_DEV: No such device", "mem0"},
            {"device disk1: persist: no space", "disk1"},
            {"ublkd running: 1 device(s) live", ""},
        });
  CHECK(devlog::current_device().empty());
}

TEST_CASE("stderr is the journal when JOURNAL_STREAM names its device and inode",
          "[log][journal]") {
  struct stat st {};
  st.st_dev = 0x803;  // 2051
  st.st_ino = 123456789;
  CHECK(is_journal_stream("2051:123456789", st));
  CHECK_FALSE(is_journal_stream("2051:123456788", st));
  CHECK_FALSE(is_journal_stream("2050:123456789", st));
  CHECK_FALSE(is_journal_stream("", st));
  CHECK_FALSE(is_journal_stream("2051", st));
  CHECK_FALSE(is_journal_stream("2051:", st));
  CHECK_FALSE(is_journal_stream(":123456789", st));
  CHECK_FALSE(is_journal_stream("2051:123456789x", st));
  CHECK_FALSE(is_journal_stream("0x803:123456789", st));
  CHECK_FALSE(is_journal_stream("-2051:123456789", st));

  // As systemd sets it, from the real stream.
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  UniqueFd r(p[0]), w(p[1]);
  struct stat pst {};
  REQUIRE(::fstat(w.get(), &pst) == 0);
  const std::string env = std::to_string(pst.st_dev) + ":" + std::to_string(pst.st_ino);
  CHECK(is_journal_stream(env, pst));
  int q[2];
  REQUIRE(::pipe2(q, O_CLOEXEC) == 0);
  UniqueFd r2(q[0]), w2(q[1]);
  struct stat other {};
  REQUIRE(::fstat(w2.get(), &other) == 0);
  CHECK_FALSE(is_journal_stream(env, other));
}

TEST_CASE("--log-target takes auto, journal or console", "[log]") {
  CHECK(parse_log_target("auto") == LogTarget::kAuto);
  CHECK(parse_log_target("journal") == LogTarget::kJournal);
  CHECK(parse_log_target("console") == LogTarget::kConsole);
  CHECK_FALSE(parse_log_target("syslog").has_value());
  CHECK_FALSE(parse_log_target("").has_value());
  CHECK_FALSE(parse_log_target("Journal").has_value());
}
