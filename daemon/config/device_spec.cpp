#include "config/device_spec.h"

#include <sched.h>

#include <algorithm>
#include <array>
#include <bit>
#include <thread>

#include "base/size.h"
#include "config/json_fields.h"

namespace ublkd {

namespace {

using config::FieldReader;

// Per backend type: the keys its "backend" object may hold and how to read
// them into a BackendSpec. `block_size` is nullopt when the spec's own
// logical_block_size was invalid, to avoid a second, derived complaint.
struct BackendType {
  std::string_view name;
  std::vector<std::string_view> keys;
  void (*read)(FieldReader& reader, const nlohmann::json& backend,
               std::optional<uint32_t> block_size, BackendSpec& out);
};

std::string bytes_text(uint64_t v) {
  return std::to_string(v) + " bytes";
}

// `required`: the type cannot work without a size. `max`: the largest size
// the type can serve.
void read_size(FieldReader& reader, const nlohmann::json& backend,
               std::optional<uint32_t> block_size, bool required, uint64_t max, BackendSpec& out) {
  std::optional<uint64_t> size = reader.size(backend, "backend", "size", required);
  if (!size) return;
  const std::string shown = config::dump_value(backend.at("size"));
  if (*size == 0) {
    reader.problem("backend.size", "must be greater than 0, got " + shown);
    return;
  }
  if (*size > max) {
    reader.problem("backend.size", shown + " (" + bytes_text(*size) + ") exceeds the largest " +
                                       out.type + " device, " + format_size(max) + " (" +
                                       bytes_text(max) + ")");
    return;
  }
  if (block_size && *size % *block_size != 0) {
    reader.problem("backend.size", shown + " (" + bytes_text(*size) +
                                       ") is not a multiple of the logical block size " +
                                       std::to_string(*block_size));
    return;
  }
  out.size = *size;
}

void read_mem(FieldReader& reader, const nlohmann::json& backend,
              std::optional<uint32_t> block_size, BackendSpec& out) {
  read_size(reader, backend, block_size, /*required=*/true, kMaxMemDeviceSize, out);
}

void read_null(FieldReader& reader, const nlohmann::json& backend,
               std::optional<uint32_t> block_size, BackendSpec& out) {
  read_size(reader, backend, block_size, /*required=*/true, kMaxDeviceSize, out);
}

void read_file(FieldReader& reader, const nlohmann::json& backend,
               std::optional<uint32_t> block_size, BackendSpec& out) {
  if (auto path = reader.string(backend, "backend", "path", /*required=*/true)) {
    // A relative path would depend on the daemon's working directory, which
    // nobody chooses on purpose; ublkctl makes its --path absolute.
    if (path->empty() || path->front() != '/') {
      reader.problem("backend.path",
                     config::dump_value(nlohmann::json(*path)) + " is not an absolute path");
    } else if (path->find('\0') != std::string::npos) {
      reader.problem("backend.path", "contains a NUL character");
    } else {
      out.path = std::move(*path);
    }
  }
  if (auto create = reader.boolean(backend, "backend", "create", false)) out.create = *create;
  if (auto direct = reader.boolean(backend, "backend", "direct_io", false)) out.direct_io = *direct;
  if (auto zc = reader.boolean(backend, "backend", "zero_copy", false)) out.zero_copy = *zc;
  const bool size_given = backend.contains("size");
  read_size(reader, backend, block_size, /*required=*/false, kMaxDeviceSize, out);
  if (out.create && !size_given) {
    reader.problem("backend.size", "required with \"create\": true (the size of the new file)");
  }
}

const std::array<BackendType, 3> kBackendTypes = {{
    {"mem", {"type", "size"}, read_mem},
    {"file", {"type", "path", "size", "create", "direct_io", "zero_copy"}, read_file},
    {"null", {"type", "size"}, read_null},
}};

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
  auto known = std::find_if(kBackendTypes.begin(), kBackendTypes.end(),
                            [&](const BackendType& t) { return t.name == *type; });
  if (known == kBackendTypes.end()) {
    std::string supported;
    for (const BackendType& t : kBackendTypes) {
      if (!supported.empty()) supported += ", ";
      supported += t.name;
    }
    // The other keys depend on the type, so they cannot be checked.
    reader.problem("backend.type",
                   "unknown backend type \"" + *type + "\" (supported: " + supported + ")");
    return;
  }
  out.type = *type;
  reader.reject_unknown_keys(backend, "backend", known->keys);
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
                                "read_only", "autostart", "recovery"});

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

    spec.queues = defaults.queues;
    if (auto queues = reader.integer(doc, "", "queues", false, 1, kMaxQueues)) {
      spec.queues = static_cast<uint32_t>(*queues);
    }
    spec.queue_depth = defaults.queue_depth;
    if (auto depth = reader.integer(doc, "", "queue_depth", false, 1, kMaxQueueDepth)) {
      spec.queue_depth = static_cast<uint32_t>(*depth);
    }

    std::optional<uint32_t> block_size = kDefaultLogicalBlockSize;
    if (auto it = doc.find("logical_block_size"); it != doc.end()) {
      block_size.reset();
      if (!it->is_number_integer()) {
        reader.problem("logical_block_size", "expected an integer, got " + describe(*it));
      } else {
        const bool negative = !it->is_number_unsigned() && it->get<int64_t>() < 0;
        const uint64_t bs = negative ? 0 : it->get<uint64_t>();
        if (std::has_single_bit(bs) && bs >= kMinLogicalBlockSize && bs <= kMaxLogicalBlockSize) {
          block_size = static_cast<uint32_t>(bs);
        } else {
          reader.problem("logical_block_size", dump_value(*it) + " is not a power of two between " +
                                                   std::to_string(kMinLogicalBlockSize) + " and " +
                                                   std::to_string(kMaxLogicalBlockSize));
        }
      }
    }
    if (block_size) spec.logical_block_size = *block_size;

    if (auto ro = reader.boolean(doc, "", "read_only", false)) spec.read_only = *ro;
    if (auto autostart = reader.boolean(doc, "", "autostart", false)) spec.autostart = *autostart;
    if (auto recovery = reader.boolean(doc, "", "recovery", false)) spec.recovery = *recovery;

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
  if (b.type == "file") {
    j["path"] = b.path;
    if (b.size != 0) j["size"] = b.size;
    j["create"] = b.create;
    j["direct_io"] = b.direct_io;
    j["zero_copy"] = b.zero_copy;
  } else {
    j["size"] = b.size;
  }
  return j;
}

nlohmann::json to_json(const DeviceSpec& spec) {
  return nlohmann::json{
      {"name", spec.name},
      {"backend", backend_json(spec.backend)},
      {"queues", spec.queues},
      {"queue_depth", spec.queue_depth},
      {"logical_block_size", spec.logical_block_size},
      {"read_only", spec.read_only},
      {"autostart", spec.autostart},
      {"recovery", spec.recovery},
  };
}

}  // namespace ublkd
