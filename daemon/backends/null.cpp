// "null": stores nothing, every request completes at once (NullBackend).
// The smallest row of the table, and the example in docs/architecture.md.
#include "backend/null_backend.h"
#include "backends/backend_type.h"

namespace ublkd {

namespace {

constexpr std::string_view kKeys[] = {"type", "size"};
constexpr BackendFlag kFlags[] = {kSizeFlag};

void read(config::FieldReader& reader, const nlohmann::json& backend,
          std::optional<uint32_t> block_size, BackendSpec& out) {
  read_size_key(reader, backend, block_size, /*required=*/true, kMaxDeviceSize, out);
}

Result<std::unique_ptr<Backend>> open(const DeviceSpec& spec, const BackendEnv&) {
  auto n = NullBackend::create(spec.backend.size);
  if (!n) return n.error();
  return std::unique_ptr<Backend>(std::move(n).value());
}

}  // namespace

const BackendType kNullBackendType = {
    .name = "null",
    .keys = kKeys,
    .flags = kFlags,
    .caps = {.reissue_safe = true},
    .read = read,
    .write = write_size_key,
    .view = view_nothing,
    .open = open,
};

}  // namespace ublkd
