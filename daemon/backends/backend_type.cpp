// What the rows of the backend table share, and the lookups the rest of
// ublkd goes through.
#include "backends/backend_type.h"

#include "base/size.h"

namespace ublkd {

namespace {

std::string bytes_text(uint64_t v) {
  return std::to_string(v) + " bytes";
}

}  // namespace

std::string backend_type_names(std::string_view separator, std::string_view last) {
  const auto types = backend_types();
  std::string out;
  for (size_t i = 0; i < types.size(); ++i) {
    if (i > 0) out += (i + 1 == types.size() && !last.empty()) ? last : separator;
    out += types[i]->name;
  }
  return out;
}

Result<std::unique_ptr<Backend>> make_backend(const DeviceSpec& spec, const BackendEnv& env) {
  const BackendType* type = find_backend_type(spec.backend.type);
  if (type == nullptr) return Error(EINVAL, "unknown backend type '" + spec.backend.type + "'");
  return type->open(spec, env);
}

Result<std::unique_ptr<Backend>> make_backend(const DeviceSpec& spec, KeptMemory* memory,
                                              bool reopen) {
  return make_backend(spec, BackendEnv{memory, reopen});
}

BackendCaps backend_caps(const BackendSpec& backend) {
  const BackendType* type = find_backend_type(backend.type);
  return type == nullptr ? BackendCaps{} : type->caps;
}

bool keeps_memory(const DeviceSpec& spec) {
  return backend_caps(spec.backend).keeps_memory && spec.recovery;
}

void read_size_key(config::FieldReader& reader, const nlohmann::json& backend,
                   std::optional<uint32_t> block_size, bool required, uint64_t max,
                   BackendSpec& out) {
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

void write_size_key(const BackendSpec& spec, nlohmann::json& out) {
  out["size"] = spec.size;
}

void view_nothing(const BackendSpec&, nlohmann::json&) {}

}  // namespace ublkd
