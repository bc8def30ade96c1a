#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "config/config_dir.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using ublkd::ConfigProblem;
using ublkd::DaemonConfig;
using ublkd::LoadedConfig;
using ublkd::LogLevel;

using ublkd::test::TempDir;

namespace {

// The directory's drop-in folder.
fs::path devices(const TempDir& dir) {
  return dir.path() / "devices.d";
}

std::string spec(const std::string& name, const std::string& extra = "") {
  return R"({"name": ")" + name + R"(", "backend": {"type": "mem", "size": "1MiB"})" + extra + "}";
}

LoadedConfig load(const TempDir& dir) {
  auto r = ublkd::load_config_dir(dir.path());
  REQUIRE(r.ok());
  return std::move(r).value();
}

std::vector<std::string> names(const LoadedConfig& config) {
  std::vector<std::string> out;
  for (const auto& d : config.devices) out.push_back(d.name);
  return out;
}

std::string all_problems(const LoadedConfig& config) {
  std::string s;
  for (const ConfigProblem& p : config.problems) s += p.to_string() + "\n";
  return s;
}

}  // namespace

TEST_CASE("config dir: drop-ins load in lexical order of file names", "[config]") {
  TempDir dir;
  dir.write("devices.d/20-b.json", spec("b"));
  dir.write("devices.d/3-c.json", spec("c"));
  dir.write("devices.d/10-a.json", spec("a"));
  dir.write("devices.d/B-upper.json", spec("upper"));

  LoadedConfig config = load(dir);
  INFO(all_problems(config));
  CHECK(config.ok());
  CHECK(config.daemon_config_ok);
  // Byte order: digits, then upper case; "3-" after "20-".
  CHECK(names(config) == std::vector<std::string>{"a", "b", "c", "upper"});
  REQUIRE(config.devices.size() == 4);
  CHECK(config.devices[0].source == (devices(dir) / "10-a.json").string());
  CHECK(config.devices[3].source == (devices(dir) / "B-upper.json").string());
}

TEST_CASE("config dir: drop-in order is by bytes, not by the locale", "[config]") {
  TempDir dir;
  // A locale's collation would give a, B, _c, z (or ignore the underscore);
  // byte order puts upper case, then '_', before lower case.
  for (const char* name : {"z", "_c", "a", "B"}) {
    dir.write(std::string("devices.d/") + name + ".json", spec(std::string("dev") + name));
  }
  LoadedConfig config = load(dir);
  INFO(all_problems(config));
  CHECK(config.ok());
  CHECK(names(config) == std::vector<std::string>{"devB", "dev_c", "deva", "devz"});
}

TEST_CASE("config dir: the same device in two files keeps the lexically first", "[config]") {
  TempDir dir;
  // Written in the opposite order, so directory order cannot decide.
  const fs::path later = dir.write("devices.d/b.json", spec("same", R"(, "queues": 2)"));
  const fs::path first = dir.write("devices.d/a.json", spec("same", R"(, "queues": 1)"));
  LoadedConfig config = load(dir);
  REQUIRE(config.devices.size() == 1);
  CHECK(config.devices[0].queues == 1);
  CHECK(config.devices[0].source == first.string());
  REQUIRE(config.problems.size() == 1);
  CHECK(config.problems[0].origin == later.string());
}

TEST_CASE("config dir: an invalid drop-in is skipped and the valid ones load", "[config]") {
  TempDir dir;
  dir.write("devices.d/a.json", spec("a"));
  const fs::path bad = dir.write("devices.d/b.json", spec("b", R"(, "queues": 0, "colour": 1)"));
  const fs::path broken = dir.write("devices.d/c.json", "{ \"name\": ");
  dir.write("devices.d/d.json", spec("d"));

  LoadedConfig config = load(dir);
  CHECK_FALSE(config.ok());
  CHECK(names(config) == std::vector<std::string>{"a", "d"});
  REQUIRE(config.problems.size() == 3);
  CHECK(config.problems[0].origin == bad.string());
  CHECK(config.problems[0].field == "colour");
  CHECK(config.problems[1].origin == bad.string());
  CHECK(config.problems[1].field == "queues");
  CHECK(config.problems[2].origin == broken.string());
  CHECK_THAT(config.problems[2].message, Catch::Contains("invalid JSON at line 1, column 11"));
}

TEST_CASE("config dir: a duplicate name names both files and skips the later", "[config]") {
  TempDir dir;
  const fs::path first = dir.write("devices.d/10-x.json", spec("same", R"(, "queues": 1)"));
  const fs::path second = dir.write("devices.d/20-y.json", spec("same", R"(, "queues": 2)"));
  dir.write("devices.d/30-z.json", spec("other"));

  LoadedConfig config = load(dir);
  REQUIRE(config.devices.size() == 2);
  CHECK(config.devices[0].name == "same");
  CHECK(config.devices[0].queues == 1);
  CHECK(config.devices[0].source == first.string());
  CHECK(config.devices[1].name == "other");
  REQUIRE(config.problems.size() == 1);
  const ConfigProblem& p = config.problems[0];
  CHECK(p.origin == second.string());
  CHECK(p.field == "name");
  CHECK_THAT(p.message, Catch::Contains("\"same\"") && Catch::Contains(first.string()));
}

TEST_CASE("config dir: hidden and non-.json files are ignored", "[config]") {
  TempDir dir;
  dir.write("devices.d/real.json", spec("real"));
  // Unparseable on purpose: reading any of them would produce a problem.
  for (const char* ignored : {"README", "real.json.bak", "real.json~", ".real.json.swp",
                              ".hidden.json", "upper.JSON", "json", "sub/inner.json"}) {
    dir.write(fs::path("devices.d") / ignored, "not json");
  }
  LoadedConfig config = load(dir);
  INFO(all_problems(config));
  CHECK(config.ok());
  CHECK(names(config) == std::vector<std::string>{"real"});
}

TEST_CASE("config dir: a symlinked drop-in is loaded", "[config]") {
  TempDir dir;
  const fs::path target = dir.write("specs/linked.json", spec("linked"));
  fs::create_directories(devices(dir));
  fs::create_symlink(target, devices(dir) / "linked.json");
  fs::create_symlink(dir.path() / "nowhere.json", devices(dir) / "dangling.json");

  LoadedConfig config = load(dir);
  CHECK(names(config) == std::vector<std::string>{"linked"});
  REQUIRE(config.problems.size() == 1);
  CHECK(config.problems[0].origin == (devices(dir) / "dangling.json").string());
  CHECK_THAT(config.problems[0].message, Catch::Contains("cannot read"));
}

TEST_CASE("config dir: odd entries in devices.d are problems", "[config]") {
  TempDir dir;
  fs::create_directories(devices(dir) / "dir.json");
  dir.write("devices.d/empty.json", "");
  dir.write("devices.d/ok.json", spec("ok"));

  LoadedConfig config = load(dir);
  CHECK(names(config) == std::vector<std::string>{"ok"});
  REQUIRE(config.problems.size() == 2);
  CHECK(config.problems[0].origin == (devices(dir) / "dir.json").string());
  CHECK_THAT(config.problems[0].message, Catch::Contains("directory"));
  CHECK(config.problems[1].origin == (devices(dir) / "empty.json").string());
  CHECK_THAT(config.problems[1].message, Catch::Contains("empty"));
}

TEST_CASE("config dir: an oversized drop-in is not read", "[config]") {
  TempDir dir;
  dir.write("devices.d/big.json", std::string(ublkd::kMaxConfigFileSize + 1, ' '));
  LoadedConfig config = load(dir);
  REQUIRE(config.problems.size() == 1);
  CHECK_THAT(config.problems[0].message, Catch::Contains("larger than 1048576 bytes"));
}

TEST_CASE("config dir: missing devices.d is an empty set", "[config]") {
  TempDir dir;
  LoadedConfig config = load(dir);
  CHECK(config.ok());
  CHECK(config.devices.empty());
  CHECK(config.daemon == DaemonConfig{});
}

TEST_CASE("config dir: devices.d that is not a directory is a problem", "[config]") {
  TempDir dir;
  dir.write("devices.d", "{}");
  LoadedConfig config = load(dir);
  REQUIRE(config.problems.size() == 1);
  CHECK(config.problems[0].origin == devices(dir).string());
  CHECK_THAT(config.problems[0].message, Catch::Contains("not a directory"));
}

TEST_CASE("config dir: a missing or non-directory DIR is an error", "[config]") {
  TempDir dir;
  const fs::path missing = dir.path() / "nope";
  auto r = ublkd::load_config_dir(missing);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == ENOENT);
  CHECK_THAT(r.error().message(), Catch::Contains(missing.string()));

  const fs::path file = dir.write("file", "");
  auto f = ublkd::load_config_dir(file);
  REQUIRE_FALSE(f.ok());
  CHECK(f.error().code() == ENOTDIR);
  CHECK_THAT(f.error().to_string(), Catch::Contains(file.string()));
}

TEST_CASE("daemon config: every field is read and the defaults feed device specs", "[config]") {
  TempDir dir;
  dir.write("ublkd.json", R"({
    "socket": "/run/test/ctl.sock",
    "admin_group": "disk",
    "log_level": "debug",
    "start_timeout": 2.5,
    "default_queues": 7,
    "default_queue_depth": 32,
    "idle_spin_us": 0,
    "batch_io": true
  })");
  dir.write("devices.d/a.json", spec("a"));
  dir.write("devices.d/b.json", spec("b", R"(, "queues": 2, "queue_depth": 16)"));

  LoadedConfig config = load(dir);
  INFO(all_problems(config));
  CHECK(config.ok());
  CHECK(config.daemon_config_ok);
  CHECK(config.daemon.socket == "/run/test/ctl.sock");
  CHECK(config.daemon.admin_group == "disk");
  CHECK(config.daemon.log_level == LogLevel::kDebug);
  CHECK(config.daemon.start_timeout == std::chrono::milliseconds(2500));
  CHECK(config.daemon.default_queues == 7);
  CHECK(config.daemon.default_queue_depth == 32);
  CHECK(config.daemon.idle_spin == std::chrono::microseconds(0));
  CHECK(config.daemon.batch_io);
  REQUIRE(config.devices.size() == 2);
  CHECK(config.devices[0].queues == 7);
  CHECK(config.devices[0].queue_depth == 32);
  CHECK(config.devices[1].queues == 2);
  CHECK(config.devices[1].queue_depth == 16);
}

TEST_CASE("daemon config: defaults", "[config]") {
  const DaemonConfig d;
  CHECK(d.socket == "/run/ublkd/ublkd.sock");
  CHECK(d.admin_group == "root");
  CHECK(d.log_level == LogLevel::kInfo);
  CHECK(d.start_timeout == std::chrono::seconds(10));
  CHECK(d.default_queues == ublkd::default_queue_count());
  CHECK(d.default_queue_depth == 128);
  CHECK(d.idle_spin == std::chrono::microseconds(200));
  CHECK_FALSE(d.batch_io);

  std::vector<ConfigProblem> problems;
  CHECK(ublkd::check_daemon_config("{}", "u.json", problems) == d);
  CHECK(problems.empty());
}

TEST_CASE("daemon config: start_timeout fractions round up to milliseconds", "[config]") {
  for (auto [text, ms] : std::vector<std::pair<std::string, int64_t>>{
           {"300", 300000}, {"1", 1000}, {"0.0001", 1}, {"0.0015", 2}}) {
    INFO(text);
    std::vector<ConfigProblem> problems;
    DaemonConfig d =
        ublkd::check_daemon_config("{\"start_timeout\": " + text + "}", "u.json", problems);
    CHECK(problems.empty());
    CHECK(d.start_timeout == std::chrono::milliseconds(ms));
  }
}

TEST_CASE("daemon config: log levels", "[config]") {
  for (LogLevel l :
       {LogLevel::kTrace, LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn, LogLevel::kError}) {
    CHECK(ublkd::parse_log_level(ublkd::to_string(l)) == l);
  }
  CHECK(ublkd::to_string(LogLevel::kWarn) == "warn");
  CHECK_FALSE(ublkd::parse_log_level("INFO").has_value());
  CHECK_FALSE(ublkd::parse_log_level("warning").has_value());
}

TEST_CASE("daemon config: every kind of mistake is rejected naming field and value", "[config]") {
  struct Case {
    std::string text;
    const char* field;
    std::vector<const char*> says;
  };
  const std::string long_socket = "/" + std::string(107, 's');
  const std::vector<Case> cases = {
      // The position is that of the last character read: the end of "x".
      {"{\"socket\": \"/x\",\n \"log_level\": \"info\" \"x\"}",
       "",
       {"line 2, column 24: unexpected string literal; expected '}'"}},
      {"[]", "", {"expected an object", "array []"}},
      {R"({"sockets": "/x"})", "sockets", {"unknown key \"sockets\""}},
      {R"({"socket": 5})", "socket", {"expected a string", "number 5"}},
      {R"({"socket": "run/ublkd.sock"})", "socket", {"absolute path", "\"run/ublkd.sock\""}},
      {R"({"socket": ""})", "socket", {"absolute path", "\"\""}},
      {R"({"socket": ")" + long_socket + "\"}", "socket", {"longer than 107 bytes"}},
      {R"({"admin_group": 0})", "admin_group", {"expected a string", "number 0"}},
      {R"({"admin_group": ""})", "admin_group", {"must not be empty", "\"\""}},
      {R"({"log_level": "verbose"})", "log_level", {"unknown log level \"verbose\""}},
      {R"({"log_level": "INFO"})", "log_level", {"\"INFO\""}},
      {R"({"log_level": 2})", "log_level", {"expected a string", "number 2"}},
      {R"({"start_timeout": 0})", "start_timeout", {"0 is out of range", "at most 300"}},
      {R"({"start_timeout": -1})", "start_timeout", {"-1 is out of range"}},
      {R"({"start_timeout": 300.5})", "start_timeout", {"300.5 is out of range"}},
      {R"({"start_timeout": "30s"})", "start_timeout", {"expected a number", "string \"30s\""}},
      {R"({"default_queues": 0})", "default_queues", {"0 is out of range 1..64"}},
      {R"({"default_queues": 65})", "default_queues", {"65 is out of range 1..64"}},
      {R"({"default_queues": "2"})", "default_queues", {"expected an integer", "string \"2\""}},
      {R"({"default_queue_depth": 0})", "default_queue_depth", {"0 is out of range 1..4096"}},
      {R"({"default_queue_depth": 4097})", "default_queue_depth", {"4097 is out of range"}},
      {R"({"idle_spin_us": -1})", "idle_spin_us", {"-1 is out of range 0..1000"}},
      {R"({"idle_spin_us": 1001})", "idle_spin_us", {"1001 is out of range 0..1000"}},
      {R"({"idle_spin_us": 0.5})", "idle_spin_us", {"expected an integer", "number 0.5"}},
      {R"({"batch_io": "yes"})", "batch_io", {"expected true or false", "string \"yes\""}},
      {R"({"batch_io": 1})", "batch_io", {"expected true or false", "number 1"}},
      {R"({"default_queue_depth": 2.0})",
       "default_queue_depth",
       {"expected an integer", "number 2.0"}},
  };
  for (const Case& c : cases) {
    INFO(c.text);
    std::vector<ConfigProblem> problems;
    const DaemonConfig d = ublkd::check_daemon_config(c.text, "/etc/ublkd/ublkd.json", problems);
    REQUIRE(problems.size() == 1);
    INFO(problems[0].to_string());
    CHECK(problems[0].origin == "/etc/ublkd/ublkd.json");
    CHECK(problems[0].field == c.field);
    for (const char* fragment : c.says) CHECK_THAT(problems[0].message, Catch::Contains(fragment));
    // A rejected field keeps its default.
    CHECK(d == DaemonConfig{});
  }
}

TEST_CASE("daemon config: problems are collected and good fields still apply", "[config]") {
  TempDir dir;
  const fs::path file = dir.write("ublkd.json", R"({
    "socket": "relative.sock", "log_level": "loud", "default_queues": 2, "colour": "red"
  })");
  dir.write("devices.d/a.json", spec("a"));

  LoadedConfig config = load(dir);
  CHECK_FALSE(config.daemon_config_ok);
  CHECK(config.daemon.socket == ublkd::kDefaultSocketPath);
  CHECK(config.daemon.log_level == LogLevel::kInfo);
  CHECK(config.daemon.default_queues == 2);
  REQUIRE(config.problems.size() == 3);
  for (const ConfigProblem& p : config.problems) CHECK(p.origin == file.string());
  std::vector<std::string> fields;
  for (const ConfigProblem& p : config.problems) fields.push_back(p.field);
  CHECK(fields == std::vector<std::string>{"colour", "socket", "log_level"});
  // The device specs are still checked, with the defaults that did parse.
  REQUIRE(config.devices.size() == 1);
  CHECK(config.devices[0].queues == 2);
}

TEST_CASE("daemon config: a ublkd.json that is a directory is a problem", "[config]") {
  TempDir dir;
  fs::create_directories(dir.path() / "ublkd.json");
  dir.write("devices.d/a.json", spec("a"));
  LoadedConfig config = load(dir);
  CHECK_FALSE(config.daemon_config_ok);
  CHECK(config.daemon == DaemonConfig{});
  REQUIRE(config.problems.size() == 1);
  CHECK(config.problems[0].origin == (dir.path() / "ublkd.json").string());
  CHECK_THAT(config.problems[0].message, Catch::Contains("is a directory"));
  CHECK(names(config) == std::vector<std::string>{"a"});
}

TEST_CASE("daemon config: an empty ublkd.json is a problem, not a file of defaults", "[config]") {
  std::vector<ConfigProblem> problems;
  const DaemonConfig d = ublkd::check_daemon_config(" \n", "/etc/ublkd/ublkd.json", problems);
  CHECK(d == DaemonConfig{});
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].to_string() == "/etc/ublkd/ublkd.json: invalid JSON: the document is empty");
}

TEST_CASE("daemon config: a broken ublkd.json comes before device problems", "[config]") {
  TempDir dir;
  dir.write("ublkd.json", "{");
  dir.write("devices.d/a.json", spec("a", R"(, "queues": 99)"));
  LoadedConfig config = load(dir);
  CHECK_FALSE(config.daemon_config_ok);
  REQUIRE(config.problems.size() == 2);
  CHECK(config.problems[0].origin == (dir.path() / "ublkd.json").string());
  CHECK(config.problems[1].origin == (devices(dir) / "a.json").string());
  CHECK(config.problems[1].field == "queues");
}
