#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "config/device_spec.h"

using ublkd::ConfigProblem;
using ublkd::DeviceSpec;
using ublkd::SpecDefaults;
using Json = nlohmann::json;

namespace {

constexpr const char* kOrigin = "/etc/ublkd/devices.d/10-mem0.json";

// Deliberately not the built-in defaults, so a test can tell them apart.
const SpecDefaults kDefaults{3, 64};

Json valid_spec() {
  return Json::parse(R"({
    "name": "mem0",
    "backend": { "type": "mem", "size": "256MiB" },
    "queues": 2, "queue_depth": 128, "logical_block_size": 512,
    "read_only": false, "autostart": true
  })");
}

// The valid spec with `patch` merged in (RFC 7386: null removes a key).
std::string patched(const Json& patch) {
  Json doc = valid_spec();
  doc.merge_patch(patch);
  return doc.dump(2);
}

std::vector<ConfigProblem> problems_of(const std::string& text) {
  std::vector<ConfigProblem> problems;
  std::optional<DeviceSpec> spec = ublkd::check_device_spec(text, kOrigin, kDefaults, problems);
  CHECK_FALSE(spec.has_value());
  return problems;
}

// A "backend" object with one mistake: the spec around it is refused with
// exactly one problem, on `field`, whose message says each of `says`.
struct BackendMistake {
  const char* what;
  Json backend;
  const char* field;
  std::vector<const char*> says;
};

ConfigProblem one_backend_problem(const BackendMistake& c) {
  const std::string text = Json{{"name", "n"}, {"backend", c.backend}}.dump();
  INFO(c.what << "\n" << text);
  const auto problems = problems_of(text);
  REQUIRE(problems.size() == 1);
  INFO(problems[0].to_string());
  CHECK(problems[0].field == c.field);
  for (const char* fragment : c.says) CHECK_THAT(problems[0].message, Catch::Contains(fragment));
  return problems[0];
}

}  // namespace

TEST_CASE("device spec: every kind of mistake is rejected naming field and value", "[spec]") {
  struct Case {
    const char* what;
    std::string text;
    const char* field;              // JSON path the problem must name
    std::vector<const char*> says;  // fragments of the message: the value, the rule
  };
  const std::string long_name(33, 'a');
  const std::vector<Case> cases = {
      // Syntax: the position is computed from the text, 1-based.
      {"invalid JSON",
       "{\n  \"name\": \"mem0\",\n  \"queues\": ,\n}",
       "",
       {"invalid JSON", "line 3, column 13", "unexpected ','"}},
      {"truncated JSON", "{ \"name\": \"mem0\"", "", {"line 1, column 17", "end of input"}},
      {"trailing garbage", "{}\n\n  x", "", {"line 3, column 3"}},
      {"columns count characters", "{\"name\": \"\xc3\xa9\xc3\xa9\" x}", "", {"line 1, column 15"}},
      {"empty document", " \n", "", {"empty"}},
      {"not an object", "[1, 2]", "", {"expected an object", "array [1,2]"}},
      {"string document", "\"mem0\"", "", {"expected an object", "string \"mem0\""}},

      {"unknown key", patched({{"queue", 2}}), "queue", {"unknown key \"queue\""}},
      {"unknown backend key",
       patched({{"backend", {{"path", "/x"}}}}),
       "backend.path",
       {"unknown key \"path\"", "type, size"}},

      {"missing name", patched({{"name", nullptr}}), "name", {"required field is missing"}},
      {"missing backend",
       patched({{"backend", nullptr}}),
       "backend",
       {"required field is missing"}},
      {"missing backend type",
       patched({{"backend", {{"type", nullptr}}}}),
       "backend.type",
       {"required field is missing"}},
      {"missing size",
       patched({{"backend", {{"size", nullptr}}}}),
       "backend.size",
       {"required field is missing"}},

      {"name of wrong type", patched({{"name", 5}}), "name", {"expected a string", "number 5"}},
      {"queues as string",
       patched({{"queues", "4"}}),
       "queues",
       {"expected an integer", "string \"4\""}},
      {"queues null",
       "{\"name\": \"m\", \"backend\": {\"type\": \"mem\", \"size\": 4096}, "
       "\"queues\": null}",
       "queues",
       {"expected an integer", "null"}},
      {"fractional depth",
       patched({{"queue_depth", 1.5}}),
       "queue_depth",
       {"expected an integer", "number 1.5"}},
      {"block size as string",
       patched({{"logical_block_size", "512"}}),
       "logical_block_size",
       {"expected an integer", "string \"512\""}},
      {"read_only as string",
       patched({{"read_only", "yes"}}),
       "read_only",
       {"expected true or false", "string \"yes\""}},
      {"autostart as number",
       patched({{"autostart", 1}}),
       "autostart",
       {"expected true or false", "number 1"}},
      {"recovery as string",
       patched({{"recovery", "off"}}),
       "recovery",
       {"expected true or false", "string \"off\""}},
      {"partition_scan as string",
       patched({{"partition_scan", "no"}}),
       "partition_scan",
       {"expected true or false", "string \"no\""}},
      {"backend as string",
       patched({{"backend", "mem"}}),
       "backend",
       {"expected an object", "string \"mem\""}},
      {"backend type of wrong type",
       patched({{"backend", {{"type", 1}}}}),
       "backend.type",
       {"expected a string", "number 1"}},
      {"size as boolean",
       patched({{"backend", {{"size", true}}}}),
       "backend.size",
       {"size string", "boolean true"}},
      {"size as float",
       patched({{"backend", {{"size", 1.5}}}}),
       "backend.size",
       {"size string", "number 1.5"}},

      {"empty name", patched({{"name", ""}}), "name", {"invalid name \"\"", "1 to 32"}},
      {"name with space", patched({{"name", "mem 0"}}), "name", {"invalid name \"mem 0\""}},
      {"name with slash", patched({{"name", "dev/0"}}), "name", {"invalid name \"dev/0\""}},
      {"name too long", patched({{"name", long_name}}), "name", {long_name.c_str(), "1 to 32"}},

      {"size 0",
       patched({{"backend", {{"size", 0}}}}),
       "backend.size",
       {"greater than 0", "got 0"}},
      {"size \"0MiB\"",
       patched({{"backend", {{"size", "0MiB"}}}}),
       "backend.size",
       {"greater than 0", "\"0MiB\""}},
      {"negative size",
       patched({{"backend", {{"size", -4096}}}}),
       "backend.size",
       {"negative", "-4096"}},
      {"negative size string",
       patched({{"backend", {{"size", "-4096"}}}}),
       "backend.size",
       {"negative", "\"-4096\""}},
      {"fractional size",
       patched({{"backend", {{"size", "1.5GiB"}}}}),
       "backend.size",
       {"whole number", "\"1.5GiB\""}},
      {"size with junk",
       patched({{"backend", {{"size", "1GiBs"}}}}),
       "backend.size",
       {"unknown unit", "\"1GiBs\""}},
      {"size overflow",
       patched({{"backend", {{"size", "99999999999999999999"}}}}),
       "backend.size",
       {"larger than", "\"99999999999999999999\""}},
      {"size not a block multiple",
       patched({{"backend", {{"size", 1000}}}}),
       "backend.size",
       {"1000", "not a multiple of the logical block size 512"}},
      {"size string not a block multiple",
       patched({{"logical_block_size", 4096}, {"backend", {{"size", "6KiB"}}}}),
       "backend.size",
       {"\"6KiB\"", "6144 bytes", "not a multiple of the logical block size 4096"}},

      {"block size not a power of two",
       patched({{"logical_block_size", 1000}}),
       "logical_block_size",
       {"1000 is not a power of two between 512 and 4096"}},
      {"block size too small",
       patched({{"logical_block_size", 256}}),
       "logical_block_size",
       {"256 is not a power of two between 512 and 4096"}},
      {"block size too large",
       patched({{"logical_block_size", 8192}}),
       "logical_block_size",
       {"8192 is not"}},
      {"block size 0", patched({{"logical_block_size", 0}}), "logical_block_size", {"0 is not"}},
      {"negative block size",
       patched({{"logical_block_size", -512}}),
       "logical_block_size",
       {"-512 is not"}},

      {"queues 0", patched({{"queues", 0}}), "queues", {"0 is out of range 1..64"}},
      {"queues 65", patched({{"queues", 65}}), "queues", {"65 is out of range 1..64"}},
      {"negative queues", patched({{"queues", -1}}), "queues", {"-1 is out of range 1..64"}},
      {"depth 0", patched({{"queue_depth", 0}}), "queue_depth", {"0 is out of range 1..4096"}},
      {"depth 4097",
       patched({{"queue_depth", 4097}}),
       "queue_depth",
       {"4097 is out of range 1..4096"}},
      {"huge depth",
       patched({{"queue_depth", 18446744073709551615ull}}),
       "queue_depth",
       {"18446744073709551615 is out of range"}},

      {"unknown backend type",
       patched({{"backend", {{"type", "iscsi"}}}}),
       "backend.type",
       {"unknown backend type \"iscsi\"", "supported: mem"}},
      {"enormous mem size",
       patched({{"backend", {{"size", "32TiB"}}}}),
       "backend.size",
       {"\"32TiB\"", "exceeds the largest mem device", "16TiB"}},
      {"null size beyond off_t",
       patched({{"backend", {{"type", "null"}, {"size", uint64_t{1} << 63}}}}),
       "backend.size",
       {"9223372036854775808", "exceeds the largest null device"}},
      {"file without path",
       patched({{"backend", {{"type", "file"}, {"size", nullptr}}}}),
       "backend.path",
       {"required field is missing"}},
      {"relative file path",
       patched({{"backend", {{"type", "file"}, {"path", "disk.img"}}}}),
       "backend.path",
       {"\"disk.img\" is not an absolute path"}},
      {"file create without size",
       patched(
           {{"backend", {{"type", "file"}, {"path", "/x"}, {"create", true}, {"size", nullptr}}}}),
       "backend.size",
       {"required with \"create\": true"}},
      {"zero_copy of wrong type",
       patched({{"backend", {{"type", "file"}, {"path", "/x"}, {"zero_copy", 1}}}}),
       "backend.zero_copy",
       {"expected true or false", "number 1"}},
      {"direct_io of wrong type",
       patched({{"backend", {{"type", "file"}, {"path", "/x"}, {"direct_io", "no"}}}}),
       "backend.direct_io",
       {"expected true or false", "string \"no\""}},
      {"file key on a null backend",
       patched({{"backend", {{"type", "null"}, {"path", "/x"}}}}),
       "backend.path",
       {"unknown key \"path\"", "type, size"}},
      {"null backend without size",
       patched({{"backend", {{"type", "null"}, {"size", nullptr}}}}),
       "backend.size",
       {"required field is missing"}},
      {"name dot-dot", patched({{"name", ".."}}), "name", {"invalid name \"..\"", "not . or .."}},
      {"backend type is case-sensitive",
       patched({{"backend", {{"type", "Mem"}}}}),
       "backend.type",
       {"\"Mem\""}},
  };

  for (const Case& c : cases) {
    INFO(c.what << "\n" << c.text);
    std::vector<ConfigProblem> problems = problems_of(c.text);
    REQUIRE(problems.size() == 1);
    const ConfigProblem& p = problems[0];
    INFO(p.to_string());
    CHECK(p.origin == kOrigin);
    CHECK(p.field == c.field);
    for (const char* fragment : c.says) CHECK_THAT(p.message, Catch::Contains(fragment));
    // The one-line form leads with the file, then the field.
    const std::string prefix =
        std::string(kOrigin) + ": " + (p.field.empty() ? "" : p.field + ": ");
    CHECK(p.to_string() == prefix + p.message);
  }
}

TEST_CASE("device spec: a document nested too deep is refused before it is parsed", "[spec]") {
  const std::string deep =
      R"({"name": "d", "backend": )" + std::string(100000, '[') + std::string(100000, ']') + "}";
  std::vector<ConfigProblem> problems;
  CHECK_FALSE(ublkd::check_device_spec(deep, kOrigin, kDefaults, problems));
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].message == "invalid JSON: nested deeper than 64 levels");
}

TEST_CASE("device spec: all problems of a document are reported together", "[spec]") {
  const std::string text = R"({
    "name": "bad name",
    "extra": 1,
    "queues": 0,
    "queue_depth": 5000,
    "logical_block_size": 1000,
    "read_only": "no",
    "autostart": null,
    "backend": { "type": "mem", "size": 0, "sparse": true }
  })";
  std::vector<ConfigProblem> problems = problems_of(text);
  std::vector<std::string> fields;
  for (const ConfigProblem& p : problems) fields.push_back(p.field);
  std::sort(fields.begin(), fields.end());
  CHECK(fields == std::vector<std::string>{"autostart", "backend.size", "backend.sparse", "extra",
                                           "logical_block_size", "name", "queue_depth", "queues",
                                           "read_only"});

  // The single-Error form lists the same problems, one per line.
  auto r = ublkd::parse_device_spec(text, kOrigin, kDefaults);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == EINVAL);
  std::string expected;
  for (const ConfigProblem& p : problems)
    expected += (expected.empty() ? "" : "\n") + p.to_string();
  CHECK(r.error().message() == expected);
}

TEST_CASE("device spec: an invalid block size does not also fail the size check", "[spec]") {
  // 1000 bytes is no multiple of 512, but the block size is what is wrong.
  std::vector<ConfigProblem> problems =
      problems_of(patched({{"logical_block_size", 1000}, {"backend", {{"size", 1000}}}}));
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].field == "logical_block_size");
}

TEST_CASE("device spec: problems accumulate across documents", "[spec]") {
  std::vector<ConfigProblem> problems;
  CHECK_FALSE(ublkd::check_device_spec(patched({{"queues", 0}}), "a.json", kDefaults, problems));
  CHECK(ublkd::check_device_spec(patched(Json::object()), "b.json", kDefaults, problems));
  CHECK_FALSE(ublkd::check_device_spec(patched({{"name", ""}}), "c.json", kDefaults, problems));
  REQUIRE(problems.size() == 2);
  CHECK(problems[0].origin == "a.json");
  CHECK(problems[1].origin == "c.json");
}

TEST_CASE("device spec: a full spec is read as written", "[spec]") {
  auto r = ublkd::parse_device_spec(valid_spec().dump(), kOrigin, kDefaults);
  REQUIRE(r.ok());
  const DeviceSpec& s = r.value();
  CHECK(s.name == "mem0");
  CHECK(s.backend.type == "mem");
  CHECK(s.backend.size == 256ull << 20);
  CHECK(s.queues == 2);
  CHECK(s.queue_depth == 128);
  CHECK(s.logical_block_size == 512);
  CHECK(s.read_only == false);
  CHECK(s.autostart == true);
  CHECK(s.source == kOrigin);
}

TEST_CASE("device spec: omitted fields take the defaults", "[spec]") {
  const std::string minimal = R"({"name": "m", "backend": {"type": "mem", "size": 1048576}})";
  auto r = ublkd::parse_device_spec(minimal, "", kDefaults);
  REQUIRE(r.ok());
  CHECK(r->queues == 3);        // from SpecDefaults
  CHECK(r->queue_depth == 64);  // from SpecDefaults
  CHECK(r->logical_block_size == 512);
  CHECK(r->read_only == false);
  CHECK(r->autostart == true);
  CHECK(r->recovery == true);
  CHECK(r->source == "");

  auto built_in = ublkd::parse_device_spec(minimal, "", SpecDefaults{});
  REQUIRE(built_in.ok());
  CHECK(built_in->queues == ublkd::default_queue_count());
  CHECK(built_in->queue_depth == 128);
}

TEST_CASE("device spec: default queue count is half the CPUs, 1 to 4", "[spec]") {
  CHECK(ublkd::default_queue_count(0u) == 1);
  CHECK(ublkd::default_queue_count(1u) == 1);
  CHECK(ublkd::default_queue_count(2u) == 1);
  CHECK(ublkd::default_queue_count(3u) == 1);
  CHECK(ublkd::default_queue_count(4u) == 2);
  CHECK(ublkd::default_queue_count(6u) == 3);
  CHECK(ublkd::default_queue_count(8u) == 4);
  CHECK(ublkd::default_queue_count(256u) == 4);
  const uint32_t n = ublkd::default_queue_count();
  CHECK(n >= 1);
  CHECK(n <= 4);
  const unsigned cpus = std::thread::hardware_concurrency();
  if (cpus != 0) CHECK(n == ublkd::default_queue_count(cpus));  // unless affinity is restricted
}

TEST_CASE("device spec: accepted values at the edges", "[spec]") {
  struct Case {
    Json patch;
    uint64_t size;
    uint32_t block_size;
  };
  const std::vector<Case> cases = {
      {{{"backend", {{"size", 512}}}}, 512, 512},
      {{{"backend", {{"size", "4096"}}}}, 4096, 512},
      {{{"backend", {{"size", "1 GiB"}}}}, 1ull << 30, 512},
      {{{"backend", {{"size", "2T"}}}}, 2ull << 40, 512},
      {{{"logical_block_size", 1024}, {"backend", {{"size", "3KiB"}}}}, 3072, 1024},
      {{{"logical_block_size", 2048}, {"backend", {{"size", "4K"}}}}, 4096, 2048},
      {{{"logical_block_size", 4096}, {"backend", {{"size", "1M"}}}}, 1ull << 20, 4096},
  };
  for (const Case& c : cases) {
    INFO(c.patch.dump());
    auto r = ublkd::parse_device_spec(patched(c.patch), kOrigin, kDefaults);
    REQUIRE(r.ok());
    CHECK(r->backend.size == c.size);
    CHECK(r->logical_block_size == c.block_size);
  }

  for (const char* name : {"a", "mem0", "A-Z_a.z-09", "0123456789abcdef0123456789abcdef"}) {
    INFO(name);
    auto r = ublkd::parse_device_spec(patched({{"name", name}}), kOrigin, kDefaults);
    REQUIRE(r.ok());
    CHECK(r->name == name);
  }

  auto limits = ublkd::parse_device_spec(patched({{"queues", 64},
                                                  {"queue_depth", 4096},
                                                  {"read_only", true},
                                                  {"autostart", false},
                                                  {"recovery", false},
                                                  {"partition_scan", false}}),
                                         kOrigin, kDefaults);
  REQUIRE(limits.ok());
  CHECK_FALSE(limits->recovery);
  CHECK_FALSE(limits->partition_scan);
  CHECK(limits->queues == 64);
  CHECK(limits->queue_depth == 4096);
  CHECK(limits->read_only);
  CHECK_FALSE(limits->autostart);
}

TEST_CASE("device spec: parsed documents and to_json round-trip", "[spec]") {
  // Built in code, so the integers are signed: they must read the same.
  const Json doc = {{"name", "r1"},
                    {"backend", {{"type", "mem"}, {"size", 8192}}},
                    {"queues", 1},
                    {"logical_block_size", 4096},
                    {"read_only", true}};
  auto r = ublkd::parse_device_spec(doc, "request", kDefaults);
  REQUIRE(r.ok());
  CHECK(r->backend.size == 8192);
  CHECK(r->queue_depth == 64);
  CHECK(r->source == "request");

  const Json out = ublkd::to_json(r.value());
  CHECK(out == Json::parse(R"({"name": "r1", "backend": {"type": "mem", "size": 8192},
      "queues": 1, "queue_depth": 64, "logical_block_size": 4096,
      "read_only": true, "autostart": true, "recovery": true, "partition_scan": true})"));

  auto again = ublkd::parse_device_spec(out, "request", SpecDefaults{});
  REQUIRE(again.ok());
  CHECK(again.value() == r.value());

  // A wrong parsed document reports like a wrong file, with the given origin.
  std::vector<ConfigProblem> problems;
  CHECK_FALSE(ublkd::check_device_spec(Json{{"name", 1}}, "request", kDefaults, problems));
  REQUIRE(problems.size() == 2);
  CHECK(problems[0].to_string() == "request: name: expected a string, got number 1");
  CHECK(problems[1].to_string() == "request: backend: required field is missing");
}

TEST_CASE("device spec: problems without an origin omit it", "[spec]") {
  ConfigProblem p{"", "queues", "0 is out of range 1..64"};
  CHECK(p.to_string() == "queues: 0 is out of range 1..64");
  ConfigProblem whole{"f.json", "", "invalid JSON"};
  CHECK(whole.to_string() == "f.json: invalid JSON");
}

TEST_CASE("device spec: names", "[spec]") {
  CHECK(ublkd::is_valid_device_name("mem0"));
  CHECK(ublkd::is_valid_device_name(std::string(32, 'x')));
  CHECK_FALSE(ublkd::is_valid_device_name(std::string(33, 'x')));
  CHECK_FALSE(ublkd::is_valid_device_name(""));
  CHECK_FALSE(ublkd::is_valid_device_name("m\xc3\xa9m"));
  CHECK_FALSE(ublkd::is_valid_device_name("a:b"));
  CHECK_FALSE(ublkd::is_valid_device_name("."));
  CHECK_FALSE(ublkd::is_valid_device_name(".."));
  CHECK_FALSE(ublkd::is_valid_device_name("a/b"));
  CHECK(ublkd::is_valid_device_name("..."));
  CHECK(ublkd::is_valid_device_name(".hidden"));
}

TEST_CASE("device spec: file and null backends", "[spec]") {
  SECTION("a file with its own size, defaults filled in") {
    auto r = ublkd::parse_device_spec(
        R"({"name": "disk0", "backend": {"type": "file", "path": "/srv/disk0.img"}})", "t",
        kDefaults);
    REQUIRE(r.ok());
    CHECK(r->backend.type == "file");
    CHECK(r->backend.path == "/srv/disk0.img");
    CHECK(r->backend.size == 0);
    CHECK_FALSE(r->backend.create);
    CHECK(r->backend.direct_io);
    const Json out = ublkd::to_json(r.value());
    CHECK_FALSE(r->backend.zero_copy);
    CHECK(out["backend"] == Json::parse(R"({"type": "file", "path": "/srv/disk0.img",
        "create": false, "direct_io": true, "zero_copy": false})"));
    auto again = ublkd::parse_device_spec(out, "t", SpecDefaults{});
    REQUIRE(again.ok());
    CHECK(again->backend == r->backend);
  }
  SECTION("a file to create, buffered") {
    auto r = ublkd::parse_device_spec(
        R"({"name": "disk1", "logical_block_size": 4096, "backend": {"type": "file",
            "path": "/srv/d1.img", "size": "1GiB", "create": true, "direct_io": false,
            "zero_copy": true}})",
        "t", kDefaults);
    REQUIRE(r.ok());
    CHECK(r->backend.size == (uint64_t{1} << 30));
    CHECK(r->backend.create);
    CHECK_FALSE(r->backend.direct_io);
    CHECK(r->backend.zero_copy);
    CHECK(ublkd::to_json(r.value())["backend"]["zero_copy"] == true);
    CHECK(ublkd::to_json(r.value())["backend"]["size"] == (uint64_t{1} << 30));
  }
  SECTION("a file size must fit the block size") {
    const auto problems = problems_of(
        R"({"name": "d", "logical_block_size": 4096, "backend": {"type": "file",
            "path": "/srv/d.img", "size": 6144}})");
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].field == "backend.size");
    CHECK_THAT(problems[0].message,
               Catch::Contains("not a multiple of the logical block size 4096"));
  }
  SECTION("null, larger than any mem device") {
    auto r = ublkd::parse_device_spec(
        R"({"name": "n0", "backend": {"type": "null", "size": "1024TiB"}})", "t", kDefaults);
    REQUIRE(r.ok());
    CHECK(r->backend.size == (uint64_t{1} << 50));
    CHECK(ublkd::to_json(r.value())["backend"] ==
          Json::parse(R"({"type": "null", "size": 1125899906842624})"));
  }
}

TEST_CASE("device spec: nbd backend keys, durations and their mistakes", "[spec][nbd]") {
  SECTION("a URI alone takes the default timeouts") {
    auto r = ublkd::parse_device_spec(
        R"({"name": "n0", "backend": {"type": "nbd",
            "uri": "nbd+unix:///disk?socket=/run/nbd.sock"}})",
        "t", kDefaults);
    REQUIRE(r.ok());
    CHECK(r->backend.type == "nbd");
    CHECK(r->backend.size == 0);
    CHECK(r->backend.params == Json::parse(R"({"uri": "nbd+unix:///disk?socket=/run/nbd.sock"})"));
    const Json out = ublkd::to_json(r.value());
    CHECK(out["backend"] ==
          Json::parse(R"({"type": "nbd", "uri": "nbd+unix:///disk?socket=/run/nbd.sock"})"));
    auto again = ublkd::parse_device_spec(out, "t", kDefaults);
    REQUIRE(again.ok());
    CHECK(again->backend == r->backend);
  }
  SECTION("durations: seconds as numbers, or strings with a unit, read back the same") {
    auto r = ublkd::parse_device_spec(
        R"({"name": "n1", "backend": {"type": "nbd", "uri": "nbds://host:10809/exp",
            "connect_timeout": 2.5, "request_timeout": "750ms", "reconnect_timeout": "2min"}})",
        "t", kDefaults);
    REQUIRE(r.ok());
    CHECK(r->backend.params["connect_timeout"] == 2500);
    CHECK(r->backend.params["request_timeout"] == 750);
    CHECK(r->backend.params["reconnect_timeout"] == 120000);
    const Json out = ublkd::to_json(r.value());
    CHECK(out["backend"]["connect_timeout"] == "2500ms");
    CHECK(out["backend"]["reconnect_timeout"] == 120);
    auto again = ublkd::parse_device_spec(out, "t", kDefaults);
    REQUIRE(again.ok());
    CHECK(again->backend == r->backend);
  }
  SECTION("0 turns the request timeout off and makes a lost connection fail at once") {
    auto r = ublkd::parse_device_spec(
        R"({"name": "n2", "backend": {"type": "nbd", "uri": "nbd://h/e",
            "request_timeout": 0, "reconnect_timeout": "0s"}})",
        "t", kDefaults);
    REQUIRE(r.ok());
    CHECK(r->backend.params["request_timeout"] == 0);
    CHECK(r->backend.params["reconnect_timeout"] == 0);
  }
  const std::vector<BackendMistake> cases = {
      {"no uri", {{"type", "nbd"}}, "backend.uri", {"required field is missing"}},
      {"not an NBD URI",
       {{"type", "nbd"}, {"uri", "http://x/y"}},
       "backend.uri",
       {"\"http://x/y\"", "not an NBD URI", "nbds+unix://"}},
      {"a unix URI without its socket",
       {{"type", "nbd"}, {"uri", "nbd+unix:///e"}},
       "backend.uri",
       {"\"nbd+unix:///e\"", "socket="}},
      {"a password is not repeated",
       {{"type", "nbd"}, {"uri", "ftp://me:secret@h/e"}},
       "backend.uri",
       {"me:***@h"}},
      {"connect_timeout 0",
       {{"type", "nbd"}, {"uri", "nbd://h/e"}, {"connect_timeout", 0}},
       "backend.connect_timeout",
       {"greater than 0", "0"}},
      {"a negative duration",
       {{"type", "nbd"}, {"uri", "nbd://h/e"}, {"request_timeout", -1}},
       "backend.request_timeout",
       {"-1", "not a duration"}},
      {"an unknown unit",
       {{"type", "nbd"}, {"uri", "nbd://h/e"}, {"reconnect_timeout", "5h"}},
       "backend.reconnect_timeout",
       {"\"5h\"", "ms, s or min"}},
      {"less than a millisecond",
       {{"type", "nbd"}, {"uri", "nbd://h/e"}, {"request_timeout", 0.0001}},
       "backend.request_timeout",
       {"0.0001", "shorter than a millisecond"}},
      {"too long",
       {{"type", "nbd"}, {"uri", "nbd://h/e"}, {"connect_timeout", 301}},
       "backend.connect_timeout",
       {"301", "largest connect_timeout, 300 s"}},
      {"a boolean",
       {{"type", "nbd"}, {"uri", "nbd://h/e"}, {"request_timeout", true}},
       "backend.request_timeout",
       {"expected seconds", "boolean"}},
      {"a size is not the nbd backend's to set",
       {{"type", "nbd"}, {"uri", "nbd://h/e"}, {"size", "1GiB"}},
       "backend.size",
       {"unknown key \"size\"", "uri"}},
  };
  for (const BackendMistake& c : cases) {
    const ConfigProblem p = one_backend_problem(c);
    if (std::string(c.what) == "a password is not repeated")
      CHECK(p.message.find("secret") == std::string::npos);
  }
}

TEST_CASE("device spec: rbd backend keys, image forms and their mistakes", "[spec][rbd]") {
  SECTION("an image alone is in pool rbd, as the rbd tool has it, and reads back the same") {
    auto r = ublkd::parse_device_spec(R"({"name": "r0", "backend": {"type": "rbd",
            "image": "disk0"}})",
                                      "t", kDefaults);
    REQUIRE(r.ok());
    CHECK(r->backend.params == Json::parse(R"({"pool": "rbd", "image": "disk0"})"));
    const Json out = ublkd::to_json(r.value());
    CHECK(out["backend"] == Json::parse(R"({"type": "rbd", "pool": "rbd", "image": "disk0"})"));
    auto again = ublkd::parse_device_spec(out, "t", kDefaults);
    REQUIRE(again.ok());
    CHECK(again->backend == r->backend);
  }
  SECTION("POOL/NAMESPACE/IMAGE, the client's files and durations") {
    auto r = ublkd::parse_device_spec(
        R"({"name": "r1", "backend": {"type": "rbd", "image": "vols/tenant1/disk7",
            "conf": "/etc/ceph/c2.conf", "cluster": "c2", "client_id": "ublkd",
            "keyring": "/etc/ceph/c2.client.ublkd.keyring", "create": true, "size": "1GiB",
            "connect_timeout": "5s", "op_timeout": 2.5}})",
        "t", kDefaults);
    REQUIRE(r.ok());
    CHECK(r->backend.params["pool"] == "vols");
    CHECK(r->backend.params["namespace"] == "tenant1");
    CHECK(r->backend.params["image"] == "disk7");
    CHECK(r->backend.params["client_id"] == "ublkd");
    CHECK(r->backend.params["op_timeout"] == 2500);
    CHECK(r->backend.create);
    CHECK(r->backend.size == (uint64_t{1} << 30));
    auto again = ublkd::parse_device_spec(ublkd::to_json(r.value()), "t", kDefaults);
    REQUIRE(again.ok());
    CHECK(again->backend == r->backend);
  }
  const std::vector<BackendMistake> cases = {
      {"no image", {{"type", "rbd"}}, "backend.image", {"required field is missing"}},
      {"a pool twice",
       {{"type", "rbd"}, {"image", "p/i"}, {"pool", "q"}},
       "backend.image",
       {"\"p/i\"", "names its pool", "leave out \"pool\""}},
      {"a snapshot",
       {{"type", "rbd"}, {"image", "rbd/disk@snap1"}},
       "backend.image",
       {"\"disk@snap1\"", "snapshot"}},
      {"an empty image name",
       {{"type", "rbd"}, {"image", "rbd/"}},
       "backend.image",
       {"\"\"", "is empty"}},
      {"a relative conf",
       {{"type", "rbd"}, {"image", "d"}, {"conf", "ceph.conf"}},
       "backend.conf",
       {"\"ceph.conf\"", "not an absolute path"}},
      {"client. in the id",
       {{"type", "rbd"}, {"image", "d"}, {"client_id", "client.admin"}},
       "backend.client_id",
       {"without \"client.\"", "(admin)"}},
      {"a size without create",
       {{"type", "rbd"}, {"image", "d"}, {"size", "1GiB"}},
       "backend.size",
       {"only with \"create\": true"}},
      {"create without a size",
       {{"type", "rbd"}, {"image", "d"}, {"create", true}},
       "backend.size",
       {"required with \"create\": true", "new image"}},
      {"op_timeout 0",
       {{"type", "rbd"}, {"image", "d"}, {"op_timeout", 0}},
       "backend.op_timeout",
       {"greater than 0"}},
      {"an nbd key",
       {{"type", "rbd"}, {"image", "d"}, {"uri", "nbd://h/e"}},
       "backend.uri",
       {"unknown key \"uri\""}},
  };
  for (const BackendMistake& c : cases) one_backend_problem(c);
}

TEST_CASE("device spec: every spec shipped in config/ parses", "[spec]") {
  namespace fs = std::filesystem;
  int seen = 0;
  for (const char* dir : {"config/devices.d", "config/examples"}) {
    for (const auto& entry : fs::directory_iterator(fs::path(UBLKD_SOURCE_ROOT) / dir)) {
      if (entry.path().extension() != ".json") continue;
      std::ifstream in(entry.path());
      std::stringstream text;
      text << in.rdbuf();
      INFO(entry.path().string());
      const auto r = ublkd::parse_device_spec(text.str(), entry.path().string(), kDefaults);
      if (!r) FAIL(r.error().to_string());
      CHECK(r->name + ".json" == entry.path().filename().string());
      ++seen;
    }
  }
  CHECK(seen >= 5);
}
