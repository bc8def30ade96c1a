// A device as the administrator describes it in DIR/devices.d/NAME.json:
//
//   { "name": "mem0", "backend": { "type": "mem", "size": "256MiB" },
//     "queues": 2, "queue_depth": 128, "logical_block_size": 512,
//     "read_only": false, "autostart": true, "recovery": true }
//
// Parsing checks the whole document and reports every problem it finds, each
// naming the file, the field and the offending value.
#pragma once

#include <concepts>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "config/config_problem.h"
#include "device/device_shape.h"

namespace ublkd {

inline constexpr size_t kMaxDeviceNameLength = 32;
inline constexpr uint32_t kMaxQueues = 64;
inline constexpr uint32_t kMaxQueueDepth = 4096;
inline constexpr uint32_t kDefaultQueueDepth = DeviceShape{}.queue_depth;
inline constexpr uint32_t kMaxDefaultQueues = 4;
inline constexpr uint32_t kMinLogicalBlockSize = 512;
inline constexpr uint32_t kMaxLogicalBlockSize = 4096;
inline constexpr uint32_t kDefaultLogicalBlockSize = DeviceShape{}.logical_block_size;
// A mem device is one shared mapping of its whole size, so the limit is the
// address space that can be reserved for it, not the memory it may use.
inline constexpr uint64_t kMaxMemDeviceSize = uint64_t{16} << 40;
// Files and block devices: what off_t can address.
inline constexpr uint64_t kMaxDeviceSize = (uint64_t{1} << 63) - 1;

// What stores the data. Each type has its own keys, checked by its row of
// the backend table (daemon/backends/), so a key that belongs to another
// type is rejected.
//   mem:  size (required)
//   file: path (required, absolute), size (required with create, else the
//         file's or block device's own), create, direct_io, zero_copy
//   null: size (required)
struct BackendSpec {
  std::string type;        // a row of the backend table: "mem", "file", "null"
  uint64_t size = 0;       // bytes, a multiple of the logical block size; 0: a file's own size
  std::string path;        // file
  bool create = false;     // file: create a missing file at `size`
  bool direct_io = true;   // file: O_DIRECT
  bool zero_copy = false;  // file: UBLK_F_AUTO_BUF_REG where the kernel has it
  // The checked values of keys that a type has and the fields above do not
  // name, by key; its row reads and writes them.
  nlohmann::json params = nlohmann::json::object();

  bool operator==(const BackendSpec&) const = default;
};

// The shape (queues 1..64, queue_depth 1..4096, logical_block_size a power
// of two 512..4096, read_only, recovery, partition_scan) is the device's own
// (DeviceShape).
// recovery: survive a daemon crash or upgrade: the kernel keeps the device
// quiesced (UBLK_F_USER_RECOVERY) until the next ublkd reattaches. Off: the
// device goes away with the daemon and its I/O fails.
struct DeviceSpec : DeviceShape {
  std::string name;  // 1..32 characters of [A-Za-z0-9_.-], not "." or ".."
  BackendSpec backend;
  bool autostart = true;
  std::string source;  // the file it came from (the parser's origin), or ""

  bool operator==(const DeviceSpec&) const = default;
};

// Half the CPUs this process may run on, at most 4, at least 1. Each queue
// is a thread that needs a CPU of its own while the submitters use the
// others: with as many queues as CPUs, queue threads and submitters take
// turns on every CPU (measured on 2 CPUs: two fio jobs ran at 0.28-0.31 of
// null_blk with 2 queues, 0.55-0.57 with 1; docs/performance.md). More
// queues than 4 rarely help a userspace backend and each costs a thread
// and memory.
uint32_t default_queue_count();
uint32_t default_queue_count(unsigned cpus);

// Values for the fields a spec may leave out that the daemon configuration
// can change (ublkd.json: default_queues, default_queue_depth).
struct SpecDefaults {
  uint32_t queues = default_queue_count();
  uint32_t queue_depth = kDefaultQueueDepth;
};

bool is_valid_device_name(std::string_view name);

namespace config {
std::optional<DeviceSpec> check_device_spec_document(const nlohmann::json& doc,
                                                     std::string_view origin,
                                                     const SpecDefaults& defaults,
                                                     std::vector<ConfigProblem>& problems);
}  // namespace config

// Appends every problem in the document to `problems` and returns the spec
// only if there were none. `origin` names the document in the problems and
// becomes DeviceSpec::source.
std::optional<DeviceSpec> check_device_spec(std::string_view json_text, std::string_view origin,
                                            const SpecDefaults& defaults,
                                            std::vector<ConfigProblem>& problems);

// The same for a document that is already parsed, e.g. part of a control
// request. A template only so that a std::string or a literal, which convert
// to nlohmann::json as readily as to std::string_view, picks the text
// overload instead of being ambiguous.
template <typename Json>
requires std::same_as<Json, nlohmann::json> std::optional<DeviceSpec> check_device_spec(
    const Json& doc, std::string_view origin, const SpecDefaults& defaults,
    std::vector<ConfigProblem>& problems) {
  return config::check_device_spec_document(doc, origin, defaults, problems);
}

// As check_device_spec(), for callers that want a single Error: EINVAL with
// one problem per line of its message (print message(), not to_string()).
Result<DeviceSpec> parse_device_spec(std::string_view json_text, std::string_view origin,
                                     const SpecDefaults& defaults);

template <typename Json>
requires std::same_as<Json, nlohmann::json> Result<DeviceSpec> parse_device_spec(
    const Json& doc, std::string_view origin, const SpecDefaults& defaults) {
  std::vector<ConfigProblem> problems;
  std::optional<DeviceSpec> spec =
      config::check_device_spec_document(doc, origin, defaults, problems);
  if (!spec) return problems_error(problems);
  return std::move(*spec);
}

// The "backend" object of a spec: the keys its type has.
nlohmann::json backend_json(const BackendSpec& backend);

// The shape's fields under their keys, as specs and the device object of
// `list` and `info` have them.
void write_shape(const DeviceShape& shape, nlohmann::json& out);

// Every field except `source`, with the size in bytes, so that parsing the
// result gives the same spec back.
nlohmann::json to_json(const DeviceSpec& spec);

}  // namespace ublkd
