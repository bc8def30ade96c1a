#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "base/unique_fd.h"
#include "ctl/client.h"
#include "ctl/commands.h"
#include "queue/queue_stats.h"
#include "queue/queue_stats.h"
#include "ublkd_version.h"
#include "temp_dir.h"

using nlohmann::json;
using ublkd::UniqueFd;
using namespace ublkd::ctl;
using namespace std::chrono_literals;

using ublkd::test::TempDir;

namespace {

Environment test_env() {
  Environment env;
  env.cwd = "/home/u";
  return env;
}


UniqueFd bound_socket(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  REQUIRE(path.size() < sizeof(addr.sun_path));
  std::memcpy(addr.sun_path, path.data(), path.size());
  REQUIRE(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0);
  return fd;
}

// Waits for fd to become readable; false after `limit`, so that a broken
// client fails the test instead of hanging it.
bool readable(int fd, std::chrono::milliseconds limit) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(limit.count())) > 0;
}

// One connection's worth of ublkd: accepts, reads one request line and
// behaves as `mode` says. The socket is listening before the constructor
// returns, so the client never races the thread.
class FakeServer {
 public:
  enum class Mode {
    kAnswer,        // send `response` + "\n"
    kClose,         // close without a word
    kNeverAnswer,   // hold the connection until the client gives up
    kPartial,       // send `response` without its newline, then close
    kAnswerUnread,  // answer and close without reading the request
  };

  FakeServer(const std::string& path, Mode mode, std::string response = "")
      : listener_(bound_socket(path)), mode_(mode), response_(std::move(response)) {
    REQUIRE(::listen(listener_.get(), 4) == 0);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeServer() { join(); }

  void join() {
    if (thread_.joinable()) thread_.join();
  }
  // The request line as received (without the newline); valid after join().
  const std::string& request() const { return request_; }
  bool client_closed() const { return client_closed_; }

 private:
  void serve() {
    if (!readable(listener_.get(), 10s)) return;
    UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) return;
    if (mode_ == Mode::kAnswerUnread) {
      send_all(conn.get(), response_ + "\n");
      return;
    }
    std::string buf;
    char c;
    while (readable(conn.get(), 10s) && ::recv(conn.get(), &c, 1, 0) == 1) {
      if (c == '\n') break;
      buf += c;
    }
    request_ = buf;
    switch (mode_) {
      case Mode::kAnswer:
        send_all(conn.get(), response_ + "\n");
        break;
      case Mode::kPartial:
        send_all(conn.get(), response_);
        break;
      case Mode::kNeverAnswer:
        // The client closing its end is the only thing that ends this.
        client_closed_ = readable(conn.get(), 10s) && ::recv(conn.get(), &c, 1, 0) == 0;
        break;
      case Mode::kClose:
      case Mode::kAnswerUnread:
        break;
    }
  }

  static void send_all(int fd, const std::string& data) {
    size_t sent = 0;
    while (sent < data.size()) {
      const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return;
      sent += static_cast<size_t>(n);
    }
  }

  UniqueFd listener_;
  Mode mode_;
  std::string response_;
  std::string request_;
  bool client_closed_ = false;
  std::thread thread_;
};

struct RunOutput {
  int status;
  std::string out;
  std::string err;
};

RunOutput run_ctl(const std::vector<std::string>& args, const Environment& env = test_env(),
                  const RunOptions& options = {}) {
  std::ostringstream out;
  std::ostringstream err;
  const int status = run(args, env, out, err, options);
  return {status, out.str(), err.str()};
}

const json kDisk0 = json::parse(R"({
  "name": "disk0", "id": 0, "state": "live",
  "backend": {"type": "file", "path": "/var/lib/ublkd/disk0.img", "direct_io": true},
  "size": 1073741824, "queues": 2, "queue_depth": 128, "logical_block_size": 512,
  "read_only": false, "block_device": "/dev/ublkb0", "persistent": true,
  "source": "/etc/ublkd/devices.d/disk0.json"})");

const json kComingUp = json::parse(R"({
  "name": "mem-coming-up", "id": null, "state": "new", "backend": {"type": "mem"},
  "size": 268435456, "queues": 4, "queue_depth": 128, "logical_block_size": 512,
  "read_only": false, "block_device": null, "persistent": false, "source": null})");

const json kFailed = json::parse(R"({
  "name": "n1", "id": 12, "state": "failed", "backend": {"type": "null"},
  "size": 1536, "queues": 1, "queue_depth": 4096, "logical_block_size": 512,
  "read_only": true, "block_device": "/dev/ublkb12", "persistent": false, "source": null,
  "error": "START_DEV timed out after 10 s"})");

}  // namespace

TEST_CASE("ublkctl turns each command line into its request", "[ublkctl]") {
  struct Case {
    std::vector<std::string> args;
    const char* request;
  };
  const Case cases[] = {
      {{"list"}, R"({"op":"list"})"},
      {{"features"}, R"({"op":"features"})"},
      {{"reload"}, R"({"op":"reload"})"},
      {{"version"}, R"({"op":"version"})"},
      {{"info", "mem0"}, R"({"name":"mem0","op":"info"})"},
      {{"del", "mem0"}, R"({"name":"mem0","op":"del"})"},
      {{"del", "--force", "mem0"}, R"({"force":true,"name":"mem0","op":"del"})"},
      {{"resize", "mem0", "2GiB"}, R"({"name":"mem0","op":"resize","size":"2GiB"})"},
      {{"resize", "--force", "mem0", "1 GiB"},
       R"({"force":true,"name":"mem0","op":"resize","size":"1 GiB"})"},
      {{"stats"}, R"({"op":"stats"})"},
      {{"stats", "mem0", "--format", "prometheus"}, R"({"name":"mem0","op":"stats"})"},
      {{"stats", "--watch", "0.5", "--count", "3"}, R"({"op":"stats"})"},
      {{"--json", "list"}, R"({"op":"list"})"},
      {{"add", "mem0", "--backend", "mem"},
       R"({"op":"add","spec":{"backend":{"type":"mem"},"name":"mem0"}})"},
      // Sizes go as typed, even ones the daemon will reject: its message
      // then quotes the user's text.
      {{"add", "mem0", "--backend=mem", "--size", "256 MiB"},
       R"({"op":"add","spec":{"backend":{"size":"256 MiB","type":"mem"},"name":"mem0"}})"},
      {{"add", "mem0", "--backend", "mem", "--size", "lots"},
       R"({"op":"add","spec":{"backend":{"size":"lots","type":"mem"},"name":"mem0"}})"},
      {{"add", "disk0", "--backend", "file", "--size", "1GiB", "--path", "disk0.img", "--create",
        "--buffered", "--queues", "2", "--depth=64", "--block-size", "4096", "--read-only",
        "--persist"},
       R"({"op":"add","persist":true,"spec":{"backend":{"create":true,"direct_io":false,)"
       R"("path":"/home/u/disk0.img","size":"1GiB","type":"file"},"logical_block_size":4096,)"
       R"("name":"disk0","queue_depth":64,"queues":2,"read_only":true}})"},
      {{"--json", "add", "--backend", "file", "--path", "./img/d.img", "d"},
       R"({"op":"add","spec":{"backend":{"path":"/home/u/img/d.img","type":"file"},"name":"d"}})"},
      {{"add", "d", "--backend", "file", "--path", "/srv/d.img"},
       R"({"op":"add","spec":{"backend":{"path":"/srv/d.img","type":"file"},"name":"d"}})"},
      // Range checks are the daemon's: 0 is passed on for it to refuse.
      {{"add", "mem0", "--backend", "mem", "--queues", "0"},
       R"({"op":"add","spec":{"backend":{"type":"mem"},"name":"mem0","queues":0}})"},
      {{"add", "--", "-odd", "--backend", "mem"}, nullptr},  // after --, no options
      {{"add", "--spec", "d.json", "--persist"}, R"({"op":"add","persist":true})"},
      {{"add", "--spec=d.json"}, R"({"op":"add"})"},
  };
  for (const Case& c : cases) {
    std::string joined;
    for (const auto& a : c.args) joined += a + " ";
    INFO("args: " << joined);
    auto inv = parse_command_line(c.args, test_env());
    if (c.request == nullptr) {
      CHECK_FALSE(inv.ok());
      continue;
    }
    REQUIRE(inv.ok());
    CHECK(inv->kind == Invocation::Kind::kRequest);
    CHECK(inv->request.dump() == c.request);
  }

  auto spec = parse_command_line({"add", "--spec", "d.json", "--persist"}, test_env());
  REQUIRE(spec.ok());
  CHECK(spec->spec_file == "d.json");
  auto json_flag = parse_command_line({"list", "--json"}, test_env());
  REQUIRE(json_flag.ok());
  CHECK(json_flag->json);
  CHECK(json_flag->command == "list");
  auto plain = parse_command_line({"list"}, test_env());
  REQUIRE(plain.ok());
  CHECK_FALSE(plain->json);
}

TEST_CASE("ublkctl rejects bad command lines with one exact line", "[ublkctl]") {
  struct Case {
    std::vector<std::string> args;
    const char* error;
  };
  const Case cases[] = {
      {{}, "missing command (see 'ublkctl --help')"},
      {{"--json"}, "missing command (see 'ublkctl --help')"},
      {{"frob"}, "unknown command \"frob\" (see 'ublkctl --help')"},
      {{"--frob", "list"}, "unknown option --frob"},
      {{"list", "extra"}, "list: unexpected argument \"extra\""},
      {{"list", "--size", "1G"}, "list: unknown option --size"},
      {{"list", "-x"}, "list: unknown option \"-x\""},
      {{"list", "--json=yes"}, "list: --json takes no value"},
      {{"info"}, "info: missing the device NAME"},
      {{"del"}, "del: missing the device NAME"},
      {{"del", "a", "b"}, "del: unexpected argument \"b\""},
      {{"resize"}, "resize: missing the device NAME"},
      {{"resize", "mem0"}, "resize: missing the SIZE"},
      {{"resize", "mem0", "1G", "2G"}, "resize: unexpected argument \"2G\""},
      {{"info", "--force", "mem0"}, "info: unknown option --force"},
      {{"stats", "a", "b"}, "stats: unexpected argument \"b\""},
      {{"stats", "--format", "csv"}, "stats: --format takes text or prometheus, not \"csv\""},
      {{"stats", "--format", "prometheus", "--json"},
       "stats: --format prometheus and --json exclude each other"},
      {{"stats", "--watch", "0"}, "stats: --watch takes seconds from 0.1 to 86400, not \"0\""},
      {{"stats", "--watch", "1s"}, "stats: --watch takes seconds from 0.1 to 86400, not \"1s\""},
      {{"stats", "--watch", "1", "--json"},
       "stats: --watch prints rates as a table; it takes neither --json nor --format prometheus"},
      {{"stats", "--count", "2"}, "stats: --count goes with --watch"},
      {{"stats", "--watch", "1", "--count", "0"}, "stats: --count must be at least 1"},
      {{"stats", "--watch", "1", "--count", "x"}, "stats: --count needs a whole number, not \"x\""},
      {{"list", "--watch", "1"}, "list: unknown option --watch"},
      {{"--socket"}, "--socket needs a value"},
      {{"--socket="}, "--socket needs a value"},
      {{"--socket", "/a", "list", "--socket", "/b"}, "list: --socket given twice"},
      {{"-V", "list"},
       "--version shows the client's version only; 'ublkctl version' asks ublkd too"},
      {{"add", "--backend", "mem"}, "add: missing the device NAME (or --spec FILE)"},
      {{"add", "mem0"}, "add: missing --backend mem|file|null|nbd|rbd"},
      {{"add", "mem0", "--size", "1G"}, "add: missing --backend mem|file|null|nbd|rbd"},
      {{"add", "mem0", "--backend"}, "add: --backend needs a value"},
      {{"add", "mem0", "--backend", "--size", "1G"}, "add: --backend needs a value"},
      {{"add", "a", "b", "--backend", "mem"}, "add: unexpected argument \"b\""},
      {{"add", "mem0", "--backend", "mem", "--queues", "two"},
       "add: --queues needs a whole number, not \"two\""},
      {{"add", "mem0", "--backend", "mem", "--queues", "-1"},
       "add: --queues needs a whole number, not \"-1\""},
      {{"add", "mem0", "--backend", "mem", "--queues", "+2"},
       "add: --queues needs a whole number, not \"+2\""},
      {{"add", "mem0", "--backend", "mem", "--depth", "2 "},
       "add: --depth needs a whole number, not \"2 \""},
      {{"add", "mem0", "--backend", "mem", "--block-size", "4k"},
       "add: --block-size needs a whole number, not \"4k\""},
      {{"add", "mem0", "--backend", "mem", "--depth", "99999999999999999999999"},
       "add: --depth: \"99999999999999999999999\" is too large"},
      {{"add", "mem0", "--backend", "mem", "--size", "1G", "--size", "2G"},
       "add: --size given twice"},
      {{"add", "mem0", "--backend", "mem", "--create=yes"}, "add: --create takes no value"},
      {{"add", "mem0", "--backend", "mem", "--frob"}, "add: unknown option --frob"},
      {{"add", "mem0", "--spec", "x.json"},
       "add: --spec cannot be combined with a device name (the spec names the device)"},
      {{"add", "--spec", "x.json", "--size", "1G"},
       "add: --spec cannot be combined with --size (the spec describes the device)"},
      {{"add", "--read-only", "--spec", "x.json"},
       "add: --spec cannot be combined with --read-only (the spec describes the device)"},
      {{"add", "mem\xff", "--backend", "mem"},
       "add: arguments must be valid UTF-8 (JSON cannot carry other bytes)"},
      {{"help", "frob"}, "help: unknown command \"frob\""},
      {{"help", "add", "list"}, "help: unexpected argument \"list\""},
  };
  for (const Case& c : cases) {
    std::string joined;
    for (const auto& a : c.args) joined += a + " ";
    INFO("args: " << joined);
    auto inv = parse_command_line(c.args, test_env());
    REQUIRE_FALSE(inv.ok());
    CHECK(inv.error().message() == c.error);
  }
}

TEST_CASE("ublkctl help and --version need no daemon", "[ublkctl]") {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"--help"}, {"-h"}, {"help"}, {"--json", "--help"}}) {
    auto inv = parse_command_line(args, test_env());
    REQUIRE(inv.ok());
    CHECK(inv->kind == Invocation::Kind::kHelp);
    CHECK(inv->text.rfind("Usage: ublkctl [--socket PATH] [--json] COMMAND", 0) == 0);
  }
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"add", "--help"},
                                             {"help", "add"},
                                             {"add", "mem0", "-h"},
                                             {"--json", "add", "--help"}}) {
    auto inv = parse_command_line(args, test_env());
    REQUIRE(inv.ok());
    CHECK(inv->kind == Invocation::Kind::kHelp);
    CHECK(inv->text.rfind("Usage: ublkctl add NAME --backend mem|file|null|nbd|rbd", 0) == 0);
  }
  for (const char* command : {"list", "info", "del", "features", "reload", "version"}) {
    auto inv = parse_command_line({command, "--help"}, test_env());
    REQUIRE(inv.ok());
    CHECK(inv->text.rfind(std::string("Usage: ublkctl ") + command, 0) == 0);
  }
  auto version = parse_command_line({"--version"}, test_env());
  REQUIRE(version.ok());
  CHECK(version->kind == Invocation::Kind::kClientVersion);

  auto help = run_ctl({"info", "--help"});
  CHECK(help.status == 0);
  CHECK(help.out.rfind("Usage: ublkctl info NAME\n", 0) == 0);
  CHECK(help.err.empty());
  auto v = run_ctl({"-V"});
  CHECK(v.status == 0);
  CHECK(v.out == std::string("ublkctl ") + UBLKD_VERSION + "\n");
  auto bad = run_ctl({"del"});
  CHECK(bad.status == 1);
  CHECK(bad.out.empty());
  CHECK(bad.err == "ublkctl: del: missing the device NAME\n");
}

TEST_CASE("ublkctl picks the socket: --socket, then $UBLKD_SOCKET, then the default", "[ublkctl]") {
  Environment env = test_env();
  auto def = parse_command_line({"list"}, env);
  REQUIRE(def.ok());
  CHECK(def->socket == "/run/ublkd/ublkd.sock");

  env.socket = "";  // set but empty counts as unset
  auto empty = parse_command_line({"list"}, env);
  REQUIRE(empty.ok());
  CHECK(empty->socket == "/run/ublkd/ublkd.sock");

  env.socket = "/tmp/env.sock";
  auto from_env = parse_command_line({"list"}, env);
  REQUIRE(from_env.ok());
  CHECK(from_env->socket == "/tmp/env.sock");

  auto option = parse_command_line({"--socket", "/tmp/opt.sock", "list"}, env);
  REQUIRE(option.ok());
  CHECK(option->socket == "/tmp/opt.sock");
  auto after = parse_command_line({"list", "--socket=/tmp/after.sock"}, env);
  REQUIRE(after.ok());
  CHECK(after->socket == "/tmp/after.sock");
}

TEST_CASE("ublkctl waits longer for the commands that bring devices up or down", "[ublkctl]") {
  CHECK(response_timeout("add") == 60s);
  CHECK(response_timeout("del") == 60s);
  CHECK(response_timeout("reload") == 60s);
  CHECK(response_timeout("resize") == 60s);
  for (const char* c : {"list", "info", "features", "version"}) CHECK(response_timeout(c) == 10s);
}

TEST_CASE("ublkctl reads spec files and points at their mistakes", "[ublkctl]") {
  auto good =
      parse_spec_text(R"({"name": "m", "backend": {"type": "mem", "size": "1G"}})", "m.json");
  REQUIRE(good.ok());
  CHECK(good->dump() == R"({"backend":{"size":"1G","type":"mem"},"name":"m"})");

  auto trailing = parse_spec_text("{\n  \"name\": \"m\",\n}\n", "m.json");
  REQUIRE_FALSE(trailing.ok());
  CHECK(trailing.error().message() ==
        "m.json:3:1: invalid JSON: unexpected '}'; expected string literal");

  // Columns count characters, not bytes.
  auto utf8 = parse_spec_text("{\"name\": \"\xc3\xa9\xc3\xa9\" x}", "m.json");
  REQUIRE_FALSE(utf8.ok());
  CHECK(utf8.error().message().rfind("m.json:1:15: invalid JSON: ", 0) == 0);

  auto array = parse_spec_text("[1, 2]", "m.json");
  REQUIRE_FALSE(array.ok());
  CHECK(array.error().message() == "m.json: a device spec must be a JSON object, not an array");

  auto empty = parse_spec_text(" \n", "m.json");
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.error().message() == "m.json: the spec file is empty");

  TempDir dir;
  auto missing = read_spec_file(dir.file("none.json"));
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message() ==
        "cannot read spec file " + dir.file("none.json") + ": No such file or directory");
  auto directory = read_spec_file(dir.file(""));
  REQUIRE_FALSE(directory.ok());
  CHECK(directory.error().message() ==
        "cannot read spec file " + dir.file("") + ": Is a directory");

  std::ofstream(dir.file("big.json")) << "{\"name\": \"" << std::string(1 << 20, 'x') << "\"}";
  auto big = read_spec_file(dir.file("big.json"));
  REQUIRE_FALSE(big.ok());
  CHECK(big.error().message() ==
        "spec file " + dir.file("big.json") + " is larger than 1 MiB, the limit of a request");
}

TEST_CASE("ublkctl checks responses and shows the daemon's errors", "[ublkctl]") {
  auto ok = interpret_response(R"({"ok": true, "result": {"name": "disk0"}})");
  REQUIRE(ok.ok());
  CHECK(ok->dump() == R"({"name":"disk0"})");

  auto with_id = interpret_response(R"({"ok": true, "id": 7, "result": [1]})");
  REQUIRE(with_id.ok());
  CHECK(with_id->dump() == "[1]");

  struct Case {
    const char* line;
    const char* error;
  };
  const Case cases[] = {
      {R"({"ok": false, "error": {"code": "not-found", "message": "no device named mem9"}})",
       "no device named mem9 [not-found]"},
      {R"({"ok": false, "error": {"code": "invalid-spec", "message":)"
       R"( "invalid spec:\nqueues: 0 is not in 1..64\nbackend.size: missing\n"}})",
       "invalid spec: [invalid-spec]\n  queues: 0 is not in 1..64\n  backend.size: missing"},
      {R"({"ok": false, "error": {"code": "internal"}})",
       "ublkd reported an error without a message [internal]"},
      {R"({"ok": false})", "ublkd reported an error without a message [?]"},
      {"not json", "invalid response from ublkd: not JSON: invalid literal; last read: 'no'"},
      {"[true]", "invalid response from ublkd: not a JSON object"},
      {R"({"result": 1})", "invalid response from ublkd: no boolean \"ok\""},
      {R"({"ok": "yes"})", "invalid response from ublkd: no boolean \"ok\""},
  };
  for (const Case& c : cases) {
    INFO("line: " << c.line);
    auto r = interpret_response(c.line);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message() == c.error);
  }
}

TEST_CASE("ublkctl list aligns its table, with - for what a device lacks yet", "[ublkctl]") {
  const json result = {{"devices", json::array({kDisk0, kComingUp, kFailed})}};
  auto text = format_result("list", result, false);
  REQUIRE(text.ok());
  CHECK(*text ==
        "NAME           ID  STATE   BACKEND    SIZE  QUEUES  DEPTH  DEVICE\n"
        "disk0           0  live    file       1GiB       2    128  /dev/ublkb0\n"
        "mem-coming-up   -  new     mem      256MiB       4    128  -\n"
        "n1             12  failed  null     1.5KiB       1   4096  /dev/ublkb12\n");

  auto empty = format_result("list", {{"devices", json::array()}}, false);
  REQUIRE(empty.ok());
  CHECK(*empty == "NAME  ID  STATE  BACKEND  SIZE  QUEUES  DEPTH  DEVICE\n");

  auto as_json = format_result("list", result, true);
  REQUIRE(as_json.ok());
  CHECK(json::parse(*as_json) == result["devices"]);
  CHECK(as_json->back() == '\n');

  auto broken = format_result("list", {{"items", json::array()}}, false);
  REQUIRE_FALSE(broken.ok());
  CHECK(broken.error().message() == "unexpected result from ublkd for list: no \"devices\" array");
}

TEST_CASE("ublkctl info shows every field, kernel flags by name", "[ublkctl]") {
  json dev = kDisk0;
  dev["kernel_flags"] = 0x42;
  dev["kernel_flag_names"] = {"URING_CMD_COMP_IN_TASK", "USER_RECOVERY"};
  auto text = format_result("info", dev, false);
  REQUIRE(text.ok());
  CHECK(*text ==
        "name:               disk0\n"
        "id:                 0\n"
        "state:              live\n"
        "backend.type:       file\n"
        "backend.path:       /var/lib/ublkd/disk0.img\n"
        "backend.direct_io:  true\n"
        "size:               1GiB (1073741824 bytes)\n"
        "queues:             2\n"
        "queue_depth:        128\n"
        "logical_block_size: 512\n"
        "read_only:          false\n"
        "block_device:       /dev/ublkb0\n"
        "persistent:         true\n"
        "source:             /etc/ublkd/devices.d/disk0.json\n"
        "kernel_flags:       0x42 (URING_CMD_COMP_IN_TASK, USER_RECOVERY)\n");

  // A failed device, no flags yet, and a field this client does not know.
  json failed = kFailed;
  failed["id"] = nullptr;
  failed["kernel_flags"] = 0;
  failed["kernel_flag_names"] = json::array();
  failed["zone_size"] = 0;
  auto failed_text = format_result("info", failed, false);
  REQUIRE(failed_text.ok());
  CHECK(*failed_text ==
        "name:               n1\n"
        "id:                 -\n"
        "state:              failed\n"
        "error:              START_DEV timed out after 10 s\n"
        "backend.type:       null\n"
        "size:               1.5KiB (1536 bytes)\n"
        "queues:             1\n"
        "queue_depth:        4096\n"
        "logical_block_size: 512\n"
        "read_only:          true\n"
        "block_device:       /dev/ublkb12\n"
        "persistent:         false\n"
        "source:             -\n"
        "kernel_flags:       0x0\n"
        "zone_size:          0\n");

  auto as_json = format_result("info", dev, true);
  REQUIRE(as_json.ok());
  CHECK(json::parse(*as_json) == dev);
}

TEST_CASE("ublkctl features, reload, add, del and version output", "[ublkctl]") {
  const json features = json::parse(R"({"value": 1099511627782, "hex": "0x10000000006",
      "known": [{"bit": 2, "name": "NEED_GET_DATA"}, {"bit": 1, "name": "URING_CMD_COMP_IN_TASK"}],
      "unknown_bits": [40], "ioctl_encoding": true})");
  auto f = format_result("features", features, false);
  REQUIRE(f.ok());
  CHECK(*f ==
        "features: 0x10000000006\n"
        "bit  1: URING_CMD_COMP_IN_TASK\n"
        "bit  2: NEED_GET_DATA\n"
        "bit 40: unknown to this ublkd\n"
        "ioctl_encoding: true\n");
  auto no_hex = format_result("features", {{"value", 0}, {"known", json::array()}}, false);
  REQUIRE(no_hex.ok());
  CHECK(*no_hex == "features: 0x0\n");

  const json reload = json::parse(R"({"started": ["mem2"],
      "failed": [{"name": "mem3", "error": "backend: /srv/m3.img: No such file or directory"}],
      "changed": [{"name": "mem0", "message": "spec changed; restart the device to apply"}],
      "orphaned": ["mem1"],
      "problems": ["/etc/ublkd/devices.d/bad.json:3:14: invalid JSON"]})");
  auto r = format_result("reload", reload, false);
  REQUIRE(r.ok());
  CHECK(*r ==
        "started: mem2\n"
        "failed: mem3: backend: /srv/m3.img: No such file or directory\n"
        "changed: mem0: spec changed; restart the device to apply\n"
        "orphaned: mem1\n"
        "problem: /etc/ublkd/devices.d/bad.json:3:14: invalid JSON\n");
  auto quiet = format_result("reload", json::parse(R"({"started": [], "failed": [], "changed": [],
                                             "orphaned": [], "problems": []})"),
                             false);
  REQUIRE(quiet.ok());
  CHECK(*quiet == "nothing changed\n");

  auto add = format_result("add", kDisk0, false);
  REQUIRE(add.ok());
  CHECK(*add == "/dev/ublkb0\n");
  auto add_json = format_result("add", kDisk0, true);
  REQUIRE(add_json.ok());
  CHECK(json::parse(*add_json) == kDisk0);

  auto del = format_result("del", {{"name", "disk0"}, {"state", "removed"}}, false);
  REQUIRE(del.ok());
  CHECK(del->empty());
  auto del_json = format_result("del", {{"name", "disk0"}, {"state", "removed"}}, true);
  REQUIRE(del_json.ok());
  CHECK(*del_json == "{\n  \"name\": \"disk0\",\n  \"state\": \"removed\"\n}\n");
  // Deleted while still open: say why the id is not free yet.
  auto held =
      format_result("del", {{"name", "disk0"}, {"state", "removed-pending"}, {"id", 3}}, false);
  REQUIRE(held.ok());
  CHECK(*held ==
        "removed; /dev/ublkb3 is still open (a mount or a process): the kernel releases it when "
        "its last user closes it\n");

  json resized = kDisk0;
  resized["size"] = 3 * (uint64_t{1} << 30);
  auto resize = format_result("resize", resized, false);
  REQUIRE(resize.ok());
  CHECK(*resize == "/dev/ublkb0: 3GiB (3221225472 bytes)\n");

  auto v = format_result("version", {{"version", "0.2.0"}, {"api", 1}}, false);
  REQUIRE(v.ok());
  CHECK(*v == std::string("ublkctl ") + UBLKD_VERSION + "\nublkd 0.2.0 (api 1)\n");
  auto v_json = format_result("version", {{"version", "0.2.0"}, {"api", 1}}, true);
  REQUIRE(v_json.ok());
  CHECK(json::parse(*v_json) == json({{"ublkctl", {{"version", UBLKD_VERSION}}},
                                      {"ublkd", {{"version", "0.2.0"}, {"api", 1}}}}));
}

namespace {

// A `stats` result with one device whose totals are given.
json stats_result(const std::string& name, uint64_t reads, uint64_t read_bytes, uint64_t writes,
                  uint64_t errors, const std::vector<uint64_t>& latency) {
  json total = json::object();
  for (const char* op : {"read", "write", "flush", "discard", "write_zeroes"})
    total[op] = {{"ops", 0}, {"bytes", 0}, {"errors", 0}};
  total["read"] = {{"ops", reads}, {"bytes", read_bytes}, {"errors", 0}};
  total["write"] = {{"ops", writes}, {"bytes", writes * 4096}, {"errors", errors}};
  total["in_flight"] = 2;
  json buckets = json::array();
  uint64_t count = 0;
  for (size_t i = 0; i < ublkd::kLatencyBuckets; ++i) {
    const uint64_t n = i < latency.size() ? latency[i] : 0;
    const uint64_t limit = ublkd::latency_bucket_limit_us(i);
    buckets.push_back({{"below_us", limit ? json(limit) : json(nullptr)}, {"count", n}});
    count += n;
  }
  total["latency_us"] = {{"count", count}, {"sum", 1000}, {"buckets", buckets}};
  return {{"devices",
           json::array({{{"name", name}, {"id", 0}, {"state", "live"}, {"total", total},
                         {"queues", json::array({total})}}})}};
}

}  // namespace

TEST_CASE("ublkctl stats as a table, as rates and for Prometheus", "[ublkctl]") {
  // 10 requests: 5 below 2 µs, 4 in [16, 32) µs, 1 in [1024, 2048) µs.
  std::vector<uint64_t> latency(ublkd::kLatencyBuckets, 0);
  latency[0] = 5;
  latency[4] = 4;
  latency[10] = 1;
  const json before = stats_result("m0", 6, 6 * 4096, 4, 1, latency);
  auto table = format_stats(before);
  REQUIRE(table.ok());
  CHECK(*table ==
        "NAME  STATE  READS  WRITES  FLUSHES  DISCARDS  ZEROES   READ  WRITTEN  ERRORS  "
        "IN_FLIGHT   P50     P99\n"
        "m0    live       6       4        0         0       0  24KiB    16KiB       1          "
        "2  <2us  <2.0ms\n");

  latency[4] += 20;
  const json after = stats_result("m0", 26, 26 * 4096, 4, 1, latency);
  auto rates = format_stats_rates(before, after, 2.0);
  REQUIRE(rates.ok());
  CHECK(*rates ==
        "NAME  READS/S  WRITES/S  FLUSHES/S  DISCARDS/S  ZEROES/S     READ  WRITTEN  ERRORS/S  "
        "IN_FLIGHT    P50    P99\n"
        "m0         10         0          0           0         0  40KiB/s     0B/s         0  "
        "        2  <32us  <32us\n");

  auto prom = format_prometheus(before);
  REQUIRE(prom.ok());
  CHECK_THAT(*prom, Catch::Contains("# TYPE ublkd_requests_total counter\n"
                                    "ublkd_requests_total{device=\"m0\",op=\"read\"} 6\n"));
  CHECK_THAT(*prom, Catch::Contains("ublkd_errors_total{device=\"m0\",op=\"write\"} 1\n"));
  CHECK_THAT(*prom, Catch::Contains("ublkd_bytes_total{device=\"m0\",op=\"read\"} 24576\n"));
  CHECK_THAT(*prom, Catch::Contains("ublkd_requests_in_flight{device=\"m0\"} 2\n"));
  CHECK_THAT(*prom, Catch::Contains("ublkd_device_live{device=\"m0\"} 1\n"));
  // Cumulative buckets in seconds, ending in +Inf with the count.
  CHECK_THAT(*prom, Catch::Contains(
                        "ublkd_request_latency_seconds_bucket{device=\"m0\",le=\"2e-06\"} 5\n"));
  CHECK_THAT(*prom, Catch::Contains(
                        "ublkd_request_latency_seconds_bucket{device=\"m0\",le=\"3.2e-05\"} 9\n"));
  CHECK_THAT(*prom, Catch::Contains(
                        "ublkd_request_latency_seconds_bucket{device=\"m0\",le=\"+Inf\"} 10\n"));
  CHECK_THAT(*prom, Catch::Contains("ublkd_request_latency_seconds_sum{device=\"m0\"} 0.001\n"));
  CHECK_THAT(*prom, Catch::Contains("ublkd_request_latency_seconds_count{device=\"m0\"} 10\n"));

  auto odd = format_prometheus(stats_result("a\"b\\c", 0, 0, 0, 0, {}));
  REQUIRE(odd.ok());
  CHECK_THAT(*odd, Catch::Contains("{device=\"a\\\"b\\\\c\"}"));

  CHECK_FALSE(format_stats(json::object()).ok());
  CHECK_FALSE(format_stats_rates(before, after, 0).ok());
}

TEST_CASE("ublkctl end to end against a fake daemon", "[ublkctl]") {
  TempDir dir;
  const std::string sock = dir.file("ublkd.sock");
  Environment env = test_env();
  env.socket = sock;

  SECTION("success: list prints the table") {
    const json result = {{"devices", json::array({kDisk0})}};
    FakeServer server(sock, FakeServer::Mode::kAnswer,
                      json({{"ok", true}, {"result", result}}).dump());
    auto r = run_ctl({"list"}, env);
    server.join();
    CHECK(server.request() == R"({"op":"list"})");
    CHECK(r.status == 0);
    CHECK(r.err.empty());
    CHECK(r.out ==
          "NAME   ID  STATE  BACKEND  SIZE  QUEUES  DEPTH  DEVICE\n"
          "disk0   0  live   file     1GiB       2    128  /dev/ublkb0\n");
  }

  SECTION("success: add prints the block device") {
    FakeServer server(sock, FakeServer::Mode::kAnswer,
                      json({{"ok", true}, {"result", kDisk0}}).dump());
    auto r = run_ctl({"--socket", sock, "add", "disk0", "--backend", "mem", "--size", "1GiB"});
    server.join();
    CHECK(server.request() ==
          R"({"op":"add","spec":{"backend":{"size":"1GiB","type":"mem"},"name":"disk0"}})");
    CHECK(r.status == 0);
    CHECK(r.out == "/dev/ublkb0\n");
    CHECK(r.err.empty());
  }

  SECTION("success: add --spec sends the file's object") {
    std::ofstream(dir.file("d.json")) << R"({"name": "d", "backend": {"type": "null"}})";
    FakeServer server(sock, FakeServer::Mode::kAnswer,
                      json({{"ok", true}, {"result", kDisk0}}).dump());
    auto r = run_ctl({"add", "--spec", dir.file("d.json"), "--persist", "--json"}, env);
    server.join();
    CHECK(server.request() ==
          R"({"op":"add","persist":true,"spec":{"backend":{"type":"null"},"name":"d"}})");
    CHECK(r.status == 0);
    CHECK(json::parse(r.out) == kDisk0);
  }

  SECTION("a broken spec file fails before the daemon is asked") {
    std::ofstream(dir.file("d.json")) << "{\"name\": \"d\",}";
    auto r = run_ctl({"add", "--spec", dir.file("d.json")}, env);
    CHECK(r.status == 1);
    CHECK(r.out.empty());
    CHECK(r.err == "ublkctl: " + dir.file("d.json") +
                       ":1:14: invalid JSON: unexpected '}'; expected string literal\n");
  }

  SECTION("an error response exits 1 with the daemon's message") {
    FakeServer server(
        sock, FakeServer::Mode::kAnswer,
        R"({"ok":false,"error":{"code":"not-found","message":"no device named mem9"}})");
    auto r = run_ctl({"info", "mem9"}, env);
    server.join();
    CHECK(server.request() == R"({"name":"mem9","op":"info"})");
    CHECK(r.status == 1);
    CHECK(r.out.empty());
    CHECK(r.err == "ublkctl: no device named mem9 [not-found]\n");
  }

  SECTION("the daemon closes without answering") {
    FakeServer server(sock, FakeServer::Mode::kClose);
    auto r = run_ctl({"features"}, env);
    server.join();
    CHECK(server.request() == R"({"op":"features"})");
    CHECK(r.status == 1);
    CHECK(r.err == "ublkctl: ublkd closed the connection without answering\n");
  }

  SECTION("the daemon closes half-way through its answer") {
    FakeServer server(sock, FakeServer::Mode::kPartial, R"({"ok": true, "resu)");
    auto r = run_ctl({"features"}, env);
    server.join();
    CHECK(r.status == 1);
    CHECK(r.err == "ublkctl: ublkd closed the connection in the middle of its response\n");
  }

  SECTION("the daemon never answers: the client times out and hangs up") {
    FakeServer server(sock, FakeServer::Mode::kNeverAnswer);
    RunOptions fast;
    fast.response_timeout = 200ms;
    const auto start = std::chrono::steady_clock::now();
    auto r = run_ctl({"list"}, env, fast);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    server.join();
    CHECK(r.status == 1);
    CHECK(r.err == "ublkctl: no response from ublkd within 200 ms\n");
    CHECK(elapsed >= 200ms);
    CHECK(elapsed < 5s);
    CHECK(server.client_closed());
  }

  SECTION("a timed-out add warns that it may still complete") {
    FakeServer server(sock, FakeServer::Mode::kNeverAnswer);
    RunOptions fast;
    fast.response_timeout = 100ms;
    auto r = run_ctl({"add", "m", "--backend", "mem"}, env, fast);
    server.join();
    CHECK(r.status == 1);
    CHECK(r.err ==
          "ublkctl: no response from ublkd within 100 ms; the add may still complete "
          "(see 'ublkctl list')\n");
  }

  SECTION("an answer sent before the request was read still reaches the user") {
    // As for `busy` and `permission-denied`: the daemon answers and closes at
    // once, so sending the request fails with EPIPE.
    FakeServer server(sock, FakeServer::Mode::kAnswerUnread,
                      R"({"ok":false,"error":{"code":"busy","message":"too many connections"}})");
    auto fd = connect_to_daemon(sock, 1s);
    REQUIRE(fd.ok());
    server.join();
    auto line = exchange_on(fd->get(), R"({"op":"list"})", 1s);
    REQUIRE(line.ok());
    auto result = interpret_response(*line);
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().message() == "too many connections [busy]");
  }

  SECTION("no socket at the path") {
    auto r = run_ctl({"list"}, env);
    CHECK(r.status == 1);
    CHECK(r.out.empty());
    CHECK(r.err == "ublkctl: cannot connect to ublkd at " + sock + ": No such file or directory\n");
  }

  SECTION("a socket nobody listens on") {
    UniqueFd stale = bound_socket(sock);
    auto r = run_ctl({"version"}, env);
    CHECK(r.status == 1);
    // The client's own version is printed even so.
    CHECK(r.out == std::string("ublkctl ") + UBLKD_VERSION + "\n");
    CHECK(r.err == "ublkctl: cannot connect to ublkd at " + sock + ": Connection refused\n");
  }

  SECTION("a socket path too long for sockaddr_un") {
    const std::string long_path = "/tmp/" + std::string(200, 'x') + ".sock";
    auto fd = connect_to_daemon(long_path, 1s);
    REQUIRE_FALSE(fd.ok());
    CHECK(fd.error().code() == ENAMETOOLONG);
    CHECK(fd.error().message() ==
          "cannot connect to ublkd at " + long_path + ": File name too long");
  }
}

namespace {

// Answers each request line of one connection with the next of `responses`,
// then closes; records the requests.
class ScriptedServer {
 public:
  ScriptedServer(const std::string& path, std::vector<std::string> responses)
      : listener_(bound_socket(path)), responses_(std::move(responses)) {
    REQUIRE(::listen(listener_.get(), 4) == 0);
    thread_ = std::thread([this] { serve(); });
  }
  ~ScriptedServer() { join(); }
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  const std::vector<std::string>& requests() const { return requests_; }

 private:
  void serve() {
    if (!readable(listener_.get(), 10s)) return;
    UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) return;
    for (const std::string& response : responses_) {
      std::string line;
      char c;
      while (readable(conn.get(), 10s) && ::recv(conn.get(), &c, 1, 0) == 1 && c != '\n') line += c;
      requests_.push_back(line);
      const std::string out = response + "\n";
      if (::send(conn.get(), out.data(), out.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(out.size()))
        return;
    }
  }

  UniqueFd listener_;
  std::vector<std::string> responses_;
  std::vector<std::string> requests_;
  std::thread thread_;
};

std::string ok_line(const json& result) {
  return json({{"ok", true}, {"result", result}}).dump();
}

}  // namespace

TEST_CASE("ublkctl attach brings a drop-in up and stays until the device leaves live",
          "[ublkctl]") {
  TempDir dir;
  const std::string sock = dir.file("ublkd.sock");
  Environment env = test_env();
  env.socket = sock;
  std::vector<std::string> notes;
  RunOptions options;
  options.watch_period = 250ms;
  options.notify = [&](const std::string& s) { notes.push_back(s); };
  const json live = {{"name", "disk0"}, {"state", "live"}, {"live", true}};

  SECTION("deleted: exit 0, after READY and STOPPING") {
    ScriptedServer server(sock, {ok_line(kDisk0), ok_line(live), ok_line(live),
                                 ok_line({{"name", "disk0"}, {"state", "absent"}, {"live", false}})});
    auto r = run_ctl({"attach", "disk0"}, env, options);
    server.join();
    REQUIRE(server.requests().size() == 4);
    CHECK(server.requests()[0] == R"({"name":"disk0","op":"up"})");
    CHECK(server.requests()[1] == R"({"name":"disk0","op":"watch","timeout_ms":250})");
    CHECK(server.requests()[3] == server.requests()[1]);
    CHECK(r.status == 0);
    CHECK(r.out == "/dev/ublkb0\n");
    CHECK(r.err == "ublkctl: device disk0 is gone\n");
    REQUIRE(notes.size() == 2);
    CHECK(notes[0] == "READY=1\nSTATUS=device disk0 live at /dev/ublkb0");
    CHECK(notes[1] == "STOPPING=1\nSTATUS=device disk0 is absent");
  }

  SECTION("deleted while still held open: exit 0") {
    ScriptedServer server(
        sock, {ok_line(kDisk0),
               ok_line({{"name", "disk0"}, {"state", "removed-pending"}, {"live", false}})});
    auto r = run_ctl({"attach", "disk0"}, env, options);
    server.join();
    CHECK(r.status == 0);
    CHECK(r.err == "ublkctl: device disk0 is removed-pending\n");
  }

  SECTION("failed: exit 1 with the reason") {
    ScriptedServer server(sock, {ok_line(kDisk0), ok_line({{"name", "disk0"}, {"state", "failed"},
                                                           {"live", false},
                                                           {"error", "queue 0 exited"}})});
    auto r = run_ctl({"attach", "disk0"}, env, options);
    server.join();
    CHECK(r.status == 1);
    CHECK(r.err == "ublkctl: device disk0 is failed: queue 0 exited\n");
  }

  SECTION("ublkd goes away: exit 1") {
    ScriptedServer server(sock, {ok_line(kDisk0)});
    auto r = run_ctl({"attach", "disk0"}, env, options);
    server.join();
    CHECK(r.status == 1);
    CHECK(r.err.rfind("ublkctl: lost ublkd while attached to disk0: ", 0) == 0);
  }

  SECTION("the device cannot come up: exit 1, never READY") {
    ScriptedServer server(
        sock, {R"({"ok":false,"error":{"code":"not-found","message":"no drop-in describes a device named disk0"}})"});
    auto r = run_ctl({"attach", "disk0"}, env, options);
    server.join();
    CHECK(r.status == 1);
    CHECK(r.err == "ublkctl: no drop-in describes a device named disk0 [not-found]\n");
    CHECK(notes.empty());
  }
}

TEST_CASE("ublkctl del --if-exists takes not-found as success", "[ublkctl]") {
  TempDir dir;
  const std::string sock = dir.file("ublkd.sock");
  Environment env = test_env();
  env.socket = sock;
  const std::string not_found =
      R"({"ok":false,"error":{"code":"not-found","message":"no device named m"}})";
  {
    FakeServer server(sock, FakeServer::Mode::kAnswer, not_found);
    auto r = run_ctl({"del", "--if-exists", "m"}, env);
    server.join();
    CHECK(server.request() == R"({"name":"m","op":"del"})");
    CHECK(r.status == 0);
    CHECK(r.err.empty());
  }
  ::unlink(sock.c_str());
  {
    FakeServer server(sock, FakeServer::Mode::kAnswer, not_found);
    auto r = run_ctl({"del", "m"}, env);
    server.join();
    CHECK(r.status == 1);
  }
  ::unlink(sock.c_str());
  {
    // Other errors stay errors.
    FakeServer server(sock, FakeServer::Mode::kAnswer,
                      R"x({"ok":false,"error":{"code":"busy","message":"device m is busy (stopping)"}})x");
    auto r = run_ctl({"del", "--if-exists", "m"}, env);
    server.join();
    CHECK(r.status == 1);
    CHECK(r.err == "ublkctl: device m is busy (stopping) [busy]\n");
  }
  auto bad = run_ctl({"list", "--if-exists"}, env);
  CHECK(bad.status == 1);
  CHECK(bad.err == "ublkctl: list: unknown option --if-exists\n");
}
