#include "config/device_spec.h"

#include <sched.h>

#include <algorithm>
#include <array>
#include <bit>
#include <thread>

#include "backends/backend_type.h"
#include "config/json_fields.h"

namespace ublkd {

namespace {

using config::FieldReader;

std::optional<uint32_t> read_block_size(FieldReader& reader, const nlohmann::json& doc) {
  auto it = doc.find("logical_block_size");
  if (it == doc.end()) return kDefaultLogicalBlockSize;
  if (!it->is_number_integer()) {
    reader.problem("logical_block_size", "expected an integer, got " + config::describe(*it));
    return std::nullopt;
  }
  const bool negative = !it->is_number_unsigned() && it->get<int64_t>() < 0;
  const uint64_t bs = negative ? 0 : it->get<uint64_t>();
  if (std::has_single_bit(bs) && bs >= kMinLogicalBlockSize && bs <= kMaxLogicalBlockSize)
    return static_cast<uint32_t>(bs);
  reader.problem("logical_block_size", config::dump_value(*it) + " is not a power of two between " +
                                           std::to_string(kMinLogicalBlockSize) + " and " +
                                           std::to_string(kMaxLogicalBlockSize));
  return std::nullopt;
}

// Reads the keys besides name and backend into `spec`; returns the logical
// block size, or nullopt when it was invalid.
std::optional<uint32_t> read_settings(FieldReader& reader, const nlohmann::json& doc,
                                      const SpecDefaults& defaults, DeviceSpec& spec) {
  DeviceShape& shape = spec;
  shape.queues = static_cast<uint16_t>(defaults.queues);
  if (auto queues = reader.integer(doc, "", "queues", false, 1, kMaxQueues))
    shape.queues = static_cast<uint16_t>(*queues);
  shape.queue_depth = static_cast<uint16_t>(defaults.queue_depth);
  if (auto depth = reader.integer(doc, "", "queue_depth", false, 1, kMaxQueueDepth))
    shape.queue_depth = static_cast<uint16_t>(*depth);
  const std::optional<uint32_t> block_size = read_block_size(reader, doc);
  if (block_size) shape.logical_block_size = *block_size;
  if (auto ro = reader.boolean(doc, "", "read_only", false)) shape.read_only = *ro;
  if (auto autostart = reader.boolean(doc, "", "autostart", false)) spec.autostart = *autostart;
  if (auto recovery = reader.boolean(doc, "", "recovery", false)) shape.recovery = *recovery;
  if (auto scan = reader.boolean(doc, "", "partition_scan", false)) shape.partition_scan = *scan;
  return block_size;
}

void read_backend(FieldReader& reader, const nlohmann::json& doc,
                  std::optional<uint32_t> block_size, BackendSpec& out) {
  auto it = doc.find("backend");
  if (it == doc.end()) {
    reader.problem("backend", "required field is missing");
    return;
  }
  if (!reader.expect_object(*it, "backend")) return;
  const nlohmann::json& backend = *it;

  std::optional<std::string> type = reader.string(backend, "backend", "type", /*required=*/true);
  if (!type) return;
  const BackendType* known = find_backend_type(*type);
  if (known == nullptr) {
    // The other keys depend on the type, so they cannot be checked.
    reader.problem("backend.type", "unknown backend type \"" + *type +
                                       "\" (supported: " + backend_type_names(", ") + ")");
    return;
  }
  out.type = *type;
  reader.reject_unknown_keys(backend, "backend", {known->keys.begin(), known->keys.end()});
  known->read(reader, backend, block_size, out);
}

}  // namespace

uint32_t default_queue_count() {
  unsigned cpus = 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = static_cast<unsigned>(CPU_COUNT(&set));
  if (cpus == 0) cpus = std::thread::hardware_concurrency();
  return default_queue_count(cpus);
}

uint32_t default_queue_count(unsigned cpus) {
  return std::clamp<uint32_t>(cpus / 2, 1, kMaxDefaultQueues);
}

bool is_valid_device_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxDeviceNameLength) return false;
  // The name becomes a file name (devices.d/NAME.json, the unit instance).
  if (name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
  });
}

namespace config {

std::optional<DeviceSpec> check_device_spec_document(const nlohmann::json& doc,
                                                     std::string_view origin,
                                                     const SpecDefaults& defaults,
                                                     std::vector<ConfigProblem>& problems) {
  FieldReader reader(origin, problems);
  const size_t before = reader.problem_count();
  try {
    if (!reader.expect_object(doc, "")) return std::nullopt;
    reader.reject_unknown_keys(doc, "",
                               {"name", "backend", "queues", "queue_depth", "logical_block_size",
                                "read_only", "autostart", "recovery", "partition_scan"});

    DeviceSpec spec;
    spec.source = std::string(origin);

    if (std::optional<std::string> name = reader.string(doc, "", "name", /*required=*/true)) {
      if (is_valid_device_name(*name)) {
        spec.name = std::move(*name);
      } else {
        reader.problem("name", "invalid name " + dump_value(nlohmann::json(*name)) +
                                   ": must be 1 to " + std::to_string(kMaxDeviceNameLength) +
                                   " characters of A-Z a-z 0-9 _ . -, and not . or ..");
      }
    }

    const std::optional<uint32_t> block_size = read_settings(reader, doc, defaults, spec);
    read_backend(reader, doc, block_size, spec.backend);

    if (reader.problem_count() != before) return std::nullopt;
    return spec;
  } catch (const nlohmann::json::exception& e) {
    // The readers check types before every access; this is a backstop so a
    // slip there cannot take the daemon down.
    reader.problem("", std::string("internal error while checking the spec: ") + e.what());
    return std::nullopt;
  }
}

}  // namespace config

std::optional<DeviceSpec> check_device_spec(std::string_view json_text, std::string_view origin,
                                            const SpecDefaults& defaults,
                                            std::vector<ConfigProblem>& problems) {
  config::FieldReader reader(origin, problems);
  std::optional<nlohmann::json> doc = reader.parse(json_text);
  if (!doc) return std::nullopt;
  return config::check_device_spec_document(*doc, origin, defaults, problems);
}

Result<DeviceSpec> parse_device_spec(std::string_view json_text, std::string_view origin,
                                     const SpecDefaults& defaults) {
  std::vector<ConfigProblem> problems;
  std::optional<DeviceSpec> spec = check_device_spec(json_text, origin, defaults, problems);
  if (!spec) return problems_error(problems);
  return std::move(*spec);
}

nlohmann::json backend_json(const BackendSpec& b) {
  nlohmann::json j = {{"type", b.type}};
  if (const BackendType* type = find_backend_type(b.type)) type->write(b, j);
  return j;
}

void write_shape(const DeviceShape& shape, nlohmann::json& out) {
  out["queues"] = shape.queues;
  out["queue_depth"] = shape.queue_depth;
  out["logical_block_size"] = shape.logical_block_size;
  out["read_only"] = shape.read_only;
  out["recovery"] = shape.recovery;
  out["partition_scan"] = shape.partition_scan;
}

nlohmann::json to_json(const DeviceSpec& spec) {
  nlohmann::json j = {
      {"name", spec.name},
      {"backend", backend_json(spec.backend)},
      {"autostart", spec.autostart},
  };
  write_shape(spec, j);
  return j;
}

}  // namespace ublkd
