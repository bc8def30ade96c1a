#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include <spdlog/spdlog.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "admin/protocol.h"
#include "admin/server.h"
#include "daemon.h"
#include "event_loop.h"
#include "manager.h"
#include "skip.h"
#include "temp_dir.h"
#include "ublkd_version.h"

using nlohmann::json;
using ublkd::admin::AdminError;
using ublkd::admin::Request;
using ublkd::admin::RequestError;
namespace admin = ublkd::admin;
namespace code = ublkd::admin::code;
namespace fs = std::filesystem;

using ublkd::test::TempDir;

namespace {

Request parsed(const std::string& line) {
  INFO("line: " << line);
  auto r = admin::parse_request(line);
  if (auto* e = std::get_if<RequestError>(&r)) FAIL(e->error.code << ": " << e->error.message);
  return std::get<Request>(std::move(r));
}

RequestError rejected(const std::string& line) {
  INFO("line: " << line);
  auto r = admin::parse_request(line);
  REQUIRE(std::holds_alternative<RequestError>(r));
  return std::get<RequestError>(std::move(r));
}

// The id texts a client may use: every JSON type, and the integer extremes.
const std::vector<std::string> kIds = {
    "7",
    "0",
    "-1",
    "18446744073709551615",
    "-9223372036854775808",
    "2.5",
    "\"abc\"",
    "\"\"",
    "null",
    "true",
    "false",
    "[1,\"x\"]",
    "[]",
    "{\"k\":{\"n\":1}}",
    "{}",
};

}  // namespace

// ---- parse_request --------------------------------------------------------

TEST_CASE("admin protocol: a valid request gives its op, the whole object and no id", "[admin]") {
  const Request req = parsed(R"(  {"op": "info", "name": "disk0"}  )");
  CHECK(req.op == "info");
  CHECK(req.doc == json{{"op", "info"}, {"name", "disk0"}});
  CHECK_FALSE(req.id.has_value());
}

TEST_CASE("admin protocol: an id of any JSON type is kept as sent", "[admin]") {
  for (const std::string& id : kIds) {
    INFO("id: " << id);
    const Request req = parsed(R"({"op": "list", "id": )" + id + "}");
    CHECK(req.op == "list");
    REQUIRE(req.id.has_value());
    CHECK(*req.id == json::parse(id));
    // Echoed back verbatim, in success and in failure.
    CHECK(admin::ok_response(req.id, json::object()).at("id") == json::parse(id));
    CHECK(admin::error_response(req.id, {code::kNotFound, "x"}).at("id") == json::parse(id));
    CHECK_THAT(admin::to_line(admin::ok_response(req.id, 1)),
               Catch::Contains("\"id\":" + json::parse(id).dump()));
  }
}

TEST_CASE("admin protocol: a request that is not an object is invalid-request", "[admin]") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"[]", "an array"},       {"[{\"op\":\"list\"}]", "an array"},
      {"\"list\"", "a string"}, {"42", "an integer"},
      {"-3", "an integer"},     {"4.5", "a number"},
      {"null", "null"},         {"true", "a boolean"},
  };
  for (const auto& [line, type] : cases) {
    const RequestError e = rejected(line);
    CHECK(e.error.code == "invalid-request");
    CHECK(e.error.message == "request must be a JSON object, not " + type);
    CHECK_FALSE(e.id.has_value());
  }
}

TEST_CASE("admin protocol: op missing or not a string is invalid-request", "[admin]") {
  SECTION("missing") {
    const RequestError e = rejected(R"({"name": "disk0"})");
    CHECK(e.error.code == "invalid-request");
    CHECK(e.error.message == "request has no \"op\" field");
    CHECK_FALSE(e.id.has_value());
  }
  SECTION("not a string") {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"7", "an integer"}, {"null", "null"},       {"[\"list\"]", "an array"},
        {"{}", "an object"}, {"false", "a boolean"}, {"1.5", "a number"},
    };
    for (const auto& [op, type] : cases) {
      const RequestError e = rejected(R"({"op": )" + op + "}");
      CHECK(e.error.code == "invalid-request");
      CHECK(e.error.message == "\"op\" must be a string, not " + type);
    }
  }
  SECTION("the id of such a request is still echoed") {
    for (const std::string& id : kIds) {
      INFO("id: " << id);
      for (const std::string& line : {"{\"id\": " + id + "}", "{\"op\": 1, \"id\": " + id + "}"}) {
        const RequestError e = rejected(line);
        REQUIRE(e.id.has_value());
        CHECK(*e.id == json::parse(id));
      }
    }
  }
}

TEST_CASE("admin protocol: numbers out of range and deep nesting are invalid-json, not a crash",
          "[admin]") {
  // Both once ended ublkd: an exception nobody caught, and recursion deep
  // enough to overflow the stack (tests/fuzz/regressions).
  const RequestError big = rejected(R"({"op": "list", "id": 1e400})");
  CHECK(big.error.code == "invalid-json");
  CHECK_THAT(big.error.message, Catch::StartsWith("request is not valid JSON: "));

  const std::string deep =
      R"({"op": "list", "id": )" + std::string(100000, '[') + std::string(100000, ']') + "}";
  const RequestError d = rejected(deep);
  CHECK(d.error.code == "invalid-json");
  CHECK(d.error.message == "request nests deeper than 64 levels");

  // 64 levels are fine, brackets inside strings do not count.
  const std::string ok = R"({"op": "list", "s": "[[[[{{{{", "id": )" + std::string(63, '[') +
                         std::string(63, ']') + "}";
  CHECK(std::holds_alternative<Request>(admin::parse_request(ok)));
}

TEST_CASE("admin protocol: invalid JSON is invalid-json with the column", "[admin]") {
  // The column is that of the character where the parser gave up, 1-based;
  // one past the end when the line stops short.
  const std::vector<std::pair<std::string, int>> cases = {
      {R"({"op": "list",})", 15},     // the '}' where a key should be
      {R"({"op" "list"})", 12},       // the end of the string where ':' should be
      {R"({"op": "list")", 14},       // truncated
      {R"({"op":"list"} x)", 15},     // trailing garbage
      {"list please", 1},             // not JSON at all
      {R"({"op":'list'})", 7},        // single quotes
      {"{\"op\":\"li\x01st\"}", 10},  // a control character in a string
      {"{\"op\":\"\xff\"}", 8},       // not UTF-8
  };
  for (const auto& [line, column] : cases) {
    const RequestError e = rejected(line);
    CHECK(e.error.code == "invalid-json");
    CHECK(e.error.message ==
          "request is not valid JSON at line 1, column " + std::to_string(column));
    CHECK_FALSE(e.id.has_value());
  }
}

TEST_CASE("admin protocol: an empty or blank line is invalid-json", "[admin]") {
  // The server skips blank lines before parsing; parse_request itself must
  // still answer them without throwing.
  const RequestError empty = rejected("");
  CHECK(empty.error.code == "invalid-json");
  CHECK(empty.error.message == "request is not valid JSON at line 1, column 1");
  const RequestError blank = rejected("   ");
  CHECK(blank.error.code == "invalid-json");
  CHECK(blank.error.message == "request is not valid JSON at line 1, column 4");
}

TEST_CASE("admin protocol: a line of 1 MiB or more without its newline is too large", "[admin]") {
  // kMaxRequestLine counts the newline, which the parser never sees.
  std::string fits = R"({"op": "list"})";
  fits.resize(admin::kMaxRequestLine - 1, ' ');
  CHECK(parsed(fits).op == "list");

  std::string over = fits + " ";
  const RequestError e = rejected(over);
  CHECK(e.error.code == "request-too-large");
  CHECK(e.error.message == "request line exceeds 1 MiB");
}

// ---- check_fields / string_field ------------------------------------------

TEST_CASE("admin protocol: check_fields allows the listed fields, op and id", "[admin]") {
  const Request req = parsed(R"({"op": "add", "id": 3, "spec": {}, "persist": true})");
  CHECK_FALSE(admin::check_fields(req, {"spec", "persist"}, {"spec"}).has_value());
  CHECK_FALSE(admin::check_fields(req, {"spec", "persist"}).has_value());
  CHECK_FALSE(admin::check_fields(parsed(R"({"op": "list", "id": null})"), {}).has_value());
}

TEST_CASE("admin protocol: check_fields rejects an unknown field", "[admin]") {
  auto e = admin::check_fields(parsed(R"({"op": "list", "verbose": true})"), {});
  REQUIRE(e.has_value());
  CHECK(e->code == "invalid-request");
  CHECK(e->message == R"(unknown field "verbose" for op "list")");

  // A field of another op is unknown too.
  e = admin::check_fields(parsed(R"({"op": "del", "name": "a", "persist": true})"), {"name"},
                          {"name"});
  REQUIRE(e.has_value());
  CHECK(e->message == R"(unknown field "persist" for op "del")");

  // Field names are case-sensitive.
  e = admin::check_fields(parsed(R"({"op": "info", "Name": "a"})"), {"name"});
  REQUIRE(e.has_value());
  CHECK(e->message == R"(unknown field "Name" for op "info")");
}

TEST_CASE("admin protocol: check_fields rejects a missing required field", "[admin]") {
  auto e = admin::check_fields(parsed(R"({"op": "info", "id": 1})"), {"name"}, {"name"});
  REQUIRE(e.has_value());
  CHECK(e->code == "invalid-request");
  CHECK(e->message == R"(op "info" needs the field "name")");

  // A required field that is present but null still counts as present; its
  // type is string_field's business.
  CHECK_FALSE(admin::check_fields(parsed(R"({"op": "info", "name": null})"), {"name"}, {"name"})
                  .has_value());

  // Unknown fields are reported before missing ones.
  e = admin::check_fields(parsed(R"({"op": "info", "nmae": "a"})"), {"name"}, {"name"});
  REQUIRE(e.has_value());
  CHECK(e->message == R"(unknown field "nmae" for op "info")");
}

TEST_CASE("admin protocol: string_field returns the string or names the field", "[admin]") {
  auto ok = admin::string_field(parsed(R"({"op": "info", "name": "disk0"})"), "name");
  REQUIRE(std::holds_alternative<std::string>(ok));
  CHECK(std::get<std::string>(ok) == "disk0");

  auto empty = admin::string_field(parsed(R"({"op": "info", "name": ""})"), "name");
  REQUIRE(std::holds_alternative<std::string>(empty));
  CHECK(std::get<std::string>(empty).empty());

  auto missing = admin::string_field(parsed(R"({"op": "del"})"), "name");
  REQUIRE(std::holds_alternative<AdminError>(missing));
  CHECK(std::get<AdminError>(missing).code == "invalid-request");
  CHECK(std::get<AdminError>(missing).message == R"(op "del" needs the field "name")");

  const std::vector<std::pair<std::string, std::string>> wrong = {
      {"5", "an integer"}, {"null", "null"},      {"[\"a\"]", "an array"},
      {"{}", "an object"}, {"true", "a boolean"}, {"0.5", "a number"},
  };
  for (const auto& [value, type] : wrong) {
    auto r = admin::string_field(parsed(R"({"op": "info", "name": )" + value + "}"), "name");
    REQUIRE(std::holds_alternative<AdminError>(r));
    CHECK(std::get<AdminError>(r).code == "invalid-request");
    CHECK(std::get<AdminError>(r).message == "\"name\" must be a string, not " + type);
  }
}

// ---- responses -------------------------------------------------------------

TEST_CASE("admin protocol: ok_response is exact JSON on one line", "[admin]") {
  CHECK(admin::to_line(admin::ok_response(json(7), {{"name", "disk0"}})) ==
        "{\"id\":7,\"ok\":true,\"result\":{\"name\":\"disk0\"}}\n");
  CHECK(admin::to_line(admin::ok_response(std::nullopt, {{"devices", json::array()}})) ==
        "{\"ok\":true,\"result\":{\"devices\":[]}}\n");
  // A null id was sent, so it is echoed; "no id" is a different thing.
  CHECK(admin::to_line(admin::ok_response(json(nullptr), json::object())) ==
        "{\"id\":null,\"ok\":true,\"result\":{}}\n");

  const json r = admin::ok_response(std::nullopt, {{"a", 1}});
  CHECK_FALSE(r.contains("id"));
  CHECK(r.at("ok") == true);
  CHECK_FALSE(r.contains("error"));
}

TEST_CASE("admin protocol: error_response is exact JSON on one line", "[admin]") {
  CHECK(admin::to_line(admin::error_response(json("a"), {"not-found", "no device named mem9"})) ==
        "{\"error\":{\"code\":\"not-found\",\"message\":\"no device named mem9\"},\"id\":\"a\","
        "\"ok\":false}\n");
  CHECK(admin::to_line(admin::error_response(std::nullopt, {"busy", "too many connections"})) ==
        "{\"error\":{\"code\":\"busy\",\"message\":\"too many connections\"},\"ok\":false}\n");

  const json r = admin::error_response(std::nullopt, {"busy", "x"});
  CHECK_FALSE(r.contains("id"));
  CHECK_FALSE(r.contains("result"));
}

TEST_CASE("admin protocol: a response is one line whatever its content", "[admin]") {
  const std::string line = admin::to_line(admin::error_response(
      json("multi\nline"), {"invalid-spec", "first problem\nsecond problem\r\n"}));
  CHECK(std::count(line.begin(), line.end(), '\n') == 1);
  CHECK(line.back() == '\n');
  CHECK(json::parse(line).at("error").at("message") == "first problem\nsecond problem\r\n");

  // Bytes that are not UTF-8 (a client's name echoed in a message) are
  // replaced, not a reason to throw and leave the client without an answer.
  std::string out;
  REQUIRE_NOTHROW(out = admin::to_line(admin::error_response(
                      std::nullopt, {"not-found", "no device named \xff\xfe"})));
  CHECK(std::count(out.begin(), out.end(), '\n') == 1);
  const json back = json::parse(out);
  CHECK(back.at("error").at("message") == "no device named \xEF\xBF\xBD\xEF\xBF\xBD");
}

// ---- error codes -----------------------------------------------------------

namespace {

// Every code constant with the string docs/admin-api.md gives it.
const std::vector<std::pair<const char*, std::string>> kCodes = {
    {code::kInvalidJson, "invalid-json"},
    {code::kInvalidRequest, "invalid-request"},
    {code::kRequestTooLarge, "request-too-large"},
    {code::kUnknownOp, "unknown-op"},
    {code::kPermissionDenied, "permission-denied"},
    {code::kInvalidSpec, "invalid-spec"},
    {code::kExists, "exists"},
    {code::kNotFound, "not-found"},
    {code::kBusy, "busy"},
    {code::kBackendError, "backend-error"},
    {code::kKernelError, "kernel-error"},
    {code::kTimeout, "timeout"},
    {code::kIoError, "io-error"},
    {code::kShuttingDown, "shutting-down"},
    {code::kUnsupported, "unsupported"},
    {code::kWouldLoseData, "would-lose-data"},
    {code::kInternal, "internal"},
};

// The codes in the first column of docs/admin-api.md's table of codes,
// sorted (a vector rather than a set, so that Catch prints it on failure).
std::vector<std::string> documented_codes() {
  const fs::path doc = fs::path(UBLKD_SOURCE_ROOT) / "docs" / "admin-api.md";
  std::ifstream in(doc);
  REQUIRE(in.good());
  std::vector<std::string> codes;
  std::string line;
  bool in_table = false;
  while (std::getline(in, line)) {
    if (line.rfind("| code | meaning |", 0) == 0) {
      in_table = true;
      continue;
    }
    if (!in_table) continue;
    if (line.rfind("|---", 0) == 0) continue;
    if (line.rfind("| `", 0) != 0) break;
    const size_t end = line.find('`', 3);
    REQUIRE(end != std::string::npos);
    codes.push_back(line.substr(3, end - 3));
  }
  std::sort(codes.begin(), codes.end());
  return codes;
}

}  // namespace

TEST_CASE("admin protocol: the error code constants spell the documented codes", "[admin]") {
  std::vector<std::string> constants;
  for (const auto& [constant, text] : kCodes) {
    CHECK(std::string(constant) == text);
    constants.push_back(constant);
  }
  std::sort(constants.begin(), constants.end());
  // No two constants share a code.
  CHECK(std::adjacent_find(constants.begin(), constants.end()) == constants.end());
  // Both ways: nothing documented is missing from the code, nothing in the
  // code is undocumented.
  CHECK(documented_codes() == constants);
}

TEST_CASE("admin protocol: envelope errors carry the documented codes", "[admin]") {
  CHECK(rejected("{").error.code == code::kInvalidJson);
  CHECK(rejected("[]").error.code == code::kInvalidRequest);
  CHECK(rejected(std::string(admin::kMaxRequestLine, ' ')).error.code == code::kRequestTooLarge);
}

// ---- the handler of the ops ----------------------------------------------

namespace {

// An AdminHandler over a Manager that never touches the kernel: every op
// used here answers from memory or fails before reaching a device, and the
// control device path cannot exist, so a slip could not reach one either.
class Handler {
 public:
  explicit Handler(fs::path config_dir = "/nonexistent-ublkd-test")
      : log_level_(quiet()),
        loop_(make_loop()),
        manager_(*loop_, options(config_dir)),
        handler_(manager_, config_dir, ublkd::SpecDefaults{2, 32}) {}

  // The handler logs what the daemon would (reload problems); the test
  // output is no place for that.
  ~Handler() { spdlog::set_level(log_level_); }
  Handler(const Handler&) = delete;
  Handler& operator=(const Handler&) = delete;

  // The response to one request line, which must come synchronously.
  json call(const std::string& line) {
    INFO("request: " << line);
    auto parsed = admin::parse_request(line);
    REQUIRE(std::holds_alternative<Request>(parsed));
    int replies = 0;
    json response;
    handler_.handle(std::get<Request>(parsed), [&](const json& r) {
      ++replies;
      response = r;
    });
    REQUIRE(replies == 1);
    return response;
  }

  // The error of a failed response, as "code: message".
  std::string error(const std::string& line) {
    const json r = call(line);
    INFO("response: " << r.dump());
    REQUIRE(r.at("ok") == false);
    return r.at("error").at("code").get<std::string>() + ": " +
           r.at("error").at("message").get<std::string>();
  }

 private:
  static spdlog::level::level_enum quiet() {
    const auto level = spdlog::get_level();
    spdlog::set_level(spdlog::level::off);
    return level;
  }
  static std::unique_ptr<ublkd::EventLoop> make_loop() {
    auto loop = ublkd::EventLoop::create();
    REQUIRE(loop.ok());
    return std::move(loop).value();
  }
  static ublkd::ManagerOptions options(const fs::path& config_dir) {
    ublkd::ManagerOptions o;
    o.config_dir = config_dir;
    o.control_path = "/nonexistent-ublkd-test/ublk-control";
    return o;
  }

  spdlog::level::level_enum log_level_;
  std::unique_ptr<ublkd::EventLoop> loop_;
  ublkd::Manager manager_;
  ublkd::AdminHandler handler_;
};

}  // namespace

TEST_CASE("admin ops: version answers the daemon's version and API level", "[admin]") {
  Handler h;
  const json r = h.call(R"({"op": "version", "id": "v"})");
  CHECK(r == json{{"ok", true}, {"id", "v"}, {"result", {{"version", UBLKD_VERSION}, {"api", 1}}}});
  CHECK(h.error(R"({"op": "version", "verbose": 1})") ==
        R"(invalid-request: unknown field "verbose" for op "version")");
}

TEST_CASE("admin ops: an unknown op is unknown-op and lists the known ones", "[admin]") {
  Handler h;
  const json r = h.call(R"({"op": "frobnicate", "id": 9})");
  CHECK(r.at("id") == 9);
  CHECK(
      h.error(R"({"op": "frobnicate"})") ==
      R"(unknown-op: unknown op "frobnicate" (known: add, del, resize, list, info, stats, up, watch, features, reload, upgrade, version))");
  // Ops are case-sensitive.
  CHECK_THAT(h.error(R"({"op": "LIST"})"), Catch::StartsWith("unknown-op: "));
}

TEST_CASE("admin ops: list with no devices, info and del of a missing one", "[admin]") {
  Handler h;
  CHECK(h.call(R"({"op": "list"})") ==
        json{{"ok", true}, {"result", {{"devices", json::array()}}}});
  CHECK(h.error(R"({"op": "list", "name": "x"})") ==
        R"(invalid-request: unknown field "name" for op "list")");

  CHECK(h.error(R"({"op": "info", "name": "mem9"})") == "not-found: no device named mem9");
  CHECK(h.error(R"({"op": "del", "name": "mem9"})") == "not-found: no device named mem9");
  CHECK(h.call(R"({"op": "stats"})") ==
        json{{"ok", true}, {"result", {{"devices", json::array()}}}});
  CHECK(h.error(R"({"op": "stats", "name": "mem9"})") == "not-found: no device named mem9");
  CHECK(h.error(R"({"op": "stats", "name": 1})") ==
        R"(invalid-request: "name" must be a string, not an integer)");
  CHECK(h.error(R"({"op": "info"})") == R"(invalid-request: op "info" needs the field "name")");
  CHECK(h.error(R"({"op": "del"})") == R"(invalid-request: op "del" needs the field "name")");
  CHECK(h.error(R"({"op": "del", "name": 0})") ==
        R"(invalid-request: "name" must be a string, not an integer)");
  CHECK(h.call(R"({"op": "del", "name": "mem9", "id": [1]})").at("id") == json::array({1}));
  CHECK(h.error(R"({"op": "del", "name": "mem9", "force": true})") ==
        "not-found: no device named mem9");
  CHECK(h.error(R"({"op": "del", "name": "mem9", "force": "yes"})") ==
        R"(invalid-request: "force" must be a boolean)");
}

TEST_CASE("admin ops: resize checks its fields and names a missing device", "[admin]") {
  Handler h;
  CHECK(h.error(R"({"op": "resize", "name": "mem9", "size": 4096})") ==
        "not-found: no device named mem9");
  CHECK(h.error(R"({"op": "resize", "name": "mem9", "size": "2GiB", "force": true})") ==
        "not-found: no device named mem9");
  CHECK(h.error(R"({"op": "resize", "name": "mem9"})") ==
        R"(invalid-request: op "resize" needs the field "size")");
  CHECK(h.error(R"({"op": "resize", "name": "mem9", "size": "2GB"})") ==
        R"(invalid-request: "size" must be a number of bytes or a size such as "2GiB", not "2GB")");
  CHECK(h.error(R"({"op": "resize", "name": "mem9", "size": -4096})") ==
        R"(invalid-request: "size" must be a number of bytes or a size such as "2GiB", not -4096)");
  CHECK(h.error(R"({"op": "resize", "name": "mem9", "size": 4096, "force": 1})") ==
        R"(invalid-request: "force" must be a boolean)");
  CHECK(h.error(R"({"op": "resize", "name": "mem9", "size": 4096, "shrink": true})") ==
        R"(invalid-request: unknown field "shrink" for op "resize")");
}

TEST_CASE("admin ops: add checks its own fields before the spec", "[admin]") {
  Handler h;
  CHECK(h.error(R"({"op": "add"})") == R"(invalid-request: op "add" needs the field "spec")");
  CHECK(h.error(R"({"op": "add", "spec": "mem0"})") ==
        R"(invalid-request: "spec" must be an object)");
  CHECK(h.error(R"({"op": "add", "spec": {}, "persist": "yes"})") ==
        R"(invalid-request: "persist" must be a boolean)");
  CHECK(h.error(R"({"op": "add", "spec": {}, "force": true})") ==
        R"(invalid-request: unknown field "force" for op "add")");
}

TEST_CASE("admin ops: an invalid spec lists every problem, each as a path in the request",
          "[admin]") {
  Handler h;
  CHECK(h.error(R"({"op": "add", "spec": {"name": "m", "queues": 0,
                    "backend": {"type": "mem"}}})") ==
        "invalid-spec: spec.queues: 0 is out of range 1..64; "
        "spec.backend.size: required field is missing");
  CHECK(h.error(
            R"({"op": "add", "spec": {"name": "..", "backend": {"type": "mem", "size": 4096}}})") ==
        "invalid-spec: spec.name: invalid name \"..\": must be 1 to 32 characters of A-Z a-z 0-9 "
        "_ . -, and not . or ..");
  // One line, so that ublkctl can print it as one.
  const std::string many =
      h.error(R"({"op": "add", "spec": {"a": 1, "b": 2, "backend": {"type": "iscsi"}}})");
  CHECK(std::count(many.begin(), many.end(), '\n') == 0);
  CHECK_THAT(many, Catch::StartsWith("invalid-spec: spec.a: unknown key") &&
                       Catch::Contains("; spec.b: unknown key") &&
                       Catch::Contains("; spec.name: required field is missing") &&
                       Catch::Contains("; spec.backend.type: unknown backend type \"iscsi\""));
}

TEST_CASE("admin ops: features has the documented shape", "[admin]") {
  Handler h;
  // The manager was never probed: no feature bits.
  const json r = h.call(R"({"op": "features"})");
  REQUIRE(r.at("ok") == true);
  CHECK(r.at("result") == json{{"value", 0},
                               {"hex", "0x0"},
                               {"known", json::array()},
                               {"unknown_bits", json::array()},
                               {"ioctl_encoding", true}});
}

TEST_CASE("admin ops: reload reports problems and starts nothing it should not", "[admin]") {
  SECTION("a missing configuration directory is io-error") {
    Handler h;
    CHECK_THAT(h.error(R"({"op": "reload"})"),
               Catch::StartsWith("io-error: ") && Catch::Contains("/nonexistent-ublkd-test"));
  }
  SECTION("problems with file and field; autostart false is not brought up") {
    TempDir dir;
    dir.write("devices.d/bad.json", R"({"name": "bad", "queues": 0})");
    dir.write("devices.d/idle.json",
              R"({"name": "idle", "autostart": false, "backend": {"type": "null", "size": 4096}})");
    Handler h(dir.path());
    const json r = h.call(R"({"op": "reload", "id": 1})");
    REQUIRE(r.at("ok") == true);
    CHECK(r.at("id") == 1);
    const json& result = r.at("result");
    CHECK(result.at("started") == json::array());
    CHECK(result.at("failed") == json::array());
    CHECK(result.at("changed") == json::array());
    CHECK(result.at("orphaned") == json::array());
    const std::string bad = (dir.path() / "devices.d" / "bad.json").string();
    CHECK(result.at("problems") == json{bad + ": queues: 0 is out of range 1..64",
                                        bad + ": backend: required field is missing"});
    CHECK(h.call(R"({"op": "list"})").at("result").at("devices") == json::array());
  }
}

TEST_CASE("admin ops: every manager failure maps to its documented code", "[admin]") {
  using ublkd::Failure;
  const std::vector<std::pair<Failure, std::string>> cases = {
      {Failure::kInvalidSpec, "invalid-spec"},
      {Failure::kExists, "exists"},
      {Failure::kNotFound, "not-found"},
      {Failure::kBusy, "busy"},
      {Failure::kBackend, "backend-error"},
      {Failure::kKernel, "kernel-error"},
      {Failure::kTimeout, "timeout"},
      {Failure::kIo, "io-error"},
      {Failure::kShuttingDown, "shutting-down"},
      {Failure::kInvalidRequest, "invalid-request"},
      {Failure::kUnsupported, "unsupported"},
      {Failure::kWouldLoseData, "would-lose-data"},
  };
  for (const auto& [kind, text] : cases) {
    const AdminError e = ublkd::to_admin_error({kind, "why " + text});
    CHECK(e.code == text);
    CHECK(e.message == "why " + text);
  }
}

// ---- the device object -----------------------------------------------------

TEST_CASE("admin API: the device object of a file device names its path and O_DIRECT", "[admin]") {
  ublkd::DeviceSnapshot d;
  d.name = "disk0";
  d.id = 3;
  d.state = ublkd::DeviceState::kLive;
  d.backend.type = "file";
  d.backend.path = "/var/lib/ublkd/disk0.img";
  d.backend.direct_io = false;
  d.backend.create = true;
  d.size = 1 << 30;
  d.queues = 2;
  d.queue_depth = 128;
  d.logical_block_size = 4096;
  d.block_device = "/dev/ublkb3";
  d.stable_path = "/dev/ublk/by-name/disk0";
  d.persistent = true;
  d.source = "/etc/ublkd/devices.d/disk0.json";
  CHECK(ublkd::to_json(d) == json::parse(R"({
    "name": "disk0", "id": 3, "state": "live",
    "backend": {"type": "file", "path": "/var/lib/ublkd/disk0.img", "direct_io": false},
    "size": 1073741824, "queues": 2, "queue_depth": 128, "logical_block_size": 4096,
    "read_only": false, "recovery": true, "partition_scan": true, "block_device": "/dev/ublkb3",
    "stable_path": "/dev/ublk/by-name/disk0", "persistent": true,
    "source": "/etc/ublkd/devices.d/disk0.json"})"));
}

TEST_CASE("admin API: the device object before ADD_DEV and after a failure", "[admin]") {
  ublkd::DeviceSnapshot d;
  d.name = "mem0";
  d.state = ublkd::DeviceState::kNew;
  d.backend.type = "mem";
  d.backend.size = 4096;
  d.size = 4096;
  const json fresh = ublkd::to_json(d);
  CHECK(fresh.at("backend") == json{{"type", "mem"}});  // no size, path or direct_io
  CHECK(fresh.at("id").is_null());
  CHECK(fresh.at("block_device").is_null());
  CHECK(fresh.at("stable_path").is_null());
  CHECK(fresh.at("source").is_null());
  CHECK(fresh.at("state") == "new");
  CHECK_FALSE(fresh.contains("error"));

  d.state = ublkd::DeviceState::kFailed;
  d.error = "START_DEV timed out";
  const json failed = ublkd::to_json(d);
  CHECK(failed.at("state") == "failed");
  CHECK(failed.at("error") == "START_DEV timed out");

  d.backend.type = "null";
  CHECK(ublkd::to_json(d).at("backend") == json{{"type", "null"}});
}

// ---- the server's framing --------------------------------------------------

namespace {

// Runs the loop on its own thread; stops and joins it however the test ends.
class LoopThread {
 public:
  explicit LoopThread(ublkd::EventLoop& loop)
      : loop_(loop), thread_([this] { (void)loop_.run(); }) {}
  ~LoopThread() {
    loop_.stop();
    thread_.join();
  }
  LoopThread(const LoopThread&) = delete;
  LoopThread& operator=(const LoopThread&) = delete;

 private:
  ublkd::EventLoop& loop_;
  std::thread thread_;
};

// Connects, sends `bytes` and returns the first `lines` lines that come back
// (fewer if the server closes or goes quiet for 5 s).
std::vector<std::string> exchange(const std::string& path, const std::string& bytes, size_t lines) {
  ublkd::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  REQUIRE(path.size() < sizeof(addr.sun_path));
  std::copy(path.begin(), path.end(), addr.sun_path);
  REQUIRE(::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(::send(fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(bytes.size()));
  std::string in;
  while (static_cast<size_t>(std::count(in.begin(), in.end(), '\n')) < lines) {
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) break;
    char buf[4096];
    const ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n <= 0) break;
    in.append(buf, static_cast<size_t>(n));
  }
  std::vector<std::string> out;
  for (size_t start = 0, nl; (nl = in.find('\n', start)) != std::string::npos; start = nl + 1) {
    out.push_back(in.substr(start, nl - start));
  }
  return out;
}

}  // namespace

TEST_CASE("admin server: one answer per non-blank line, in order, echoing ids",
          "[admin][env][env-root]") {
  if (::geteuid() != 0) {
    SKIP_TEST("binding the admin socket sets its group, which needs root");
  }
  TempDir dir;
  auto loop = ublkd::EventLoop::create();
  REQUIRE(loop.ok());
  admin::ServerOptions options;
  options.socket_path = (dir.path() / "admin.sock").string();
  options.admin_gid = ::getgid();
  admin::Server server(**loop, options,
                       [](const Request& req, const admin::Peer&, admin::Server::Reply reply) {
                         reply(admin::ok_response(req.id, {{"op", req.op}}));
                       });
  REQUIRE(server.listen().ok());
  LoopThread running(**loop);

  const std::vector<std::string> got = exchange(options.socket_path,
                                                "{\"op\":\"list\",\"id\":1}\n"
                                                "\n"
                                                " \t \n"
                                                "{\"id\":\"x\"}\r\n"
                                                "not json\n"
                                                "{\"op\":\"version\"}\r\n",
                                                5);
  CHECK(got ==
        std::vector<std::string>{
            R"({"id":1,"ok":true,"result":{"op":"list"}})",
            R"({"error":{"code":"invalid-request","message":"request has no \"op\" field"},)"
            R"("id":"x","ok":false})",
            R"({"error":{"code":"invalid-json","message":"request is not valid JSON at line )"
            R"(1, column 2"},"ok":false})",
            R"({"ok":true,"result":{"op":"version"}})",
        });
}

TEST_CASE("admin ops: upgrade is refused without a state dir to hand devices over in", "[admin]") {
  Handler h;
  CHECK(h.error(R"({"op": "upgrade"})") ==
        "io-error: ublkd keeps no state dir to hand devices over in");
  CHECK(h.error(R"({"op": "upgrade", "now": true})") ==
        R"(invalid-request: unknown field "now" for op "upgrade")");
}
