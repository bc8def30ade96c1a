// "null": stores nothing, every request completes at once (NullBackend).
// The smallest row of the table, and the example in docs/architecture.md.
#include "backend/null_backend.h"
#include "backends/backend_type.h"

namespace ublkd {

namespace {

void read(config::FieldReader& reader, const nlohmann::json& backend,
          std::optional<uint32_t> block_size, BackendSpec& out) {
  read_size_key(reader, backend, block_size, /*required=*/true, kMaxDeviceSize, out);
}

Result<std::unique_ptr<Backend>> open(const DeviceSpec& spec, const BackendEnv&) {
  return as_backend(NullBackend::create(spec.backend.size));
}

}  // namespace

extern const BackendType kNullBackendType = {
    "null", kSizeOnlyKeys,  kSizeOnlyFlags, {.reissue_safe = true},
    read,   write_size_key, view_nothing,   open};

}  // namespace ublkd
