// "mem": a RAM disk (MemBackend). With recovery on, its memory is kept
// where a restarted ublkd finds it again (BackendEnv::memory).
#include "backend/mem_backend.h"
#include "backends/backend_type.h"

namespace ublkd {

namespace {

constexpr std::string_view kKeys[] = {"type", "size"};
constexpr BackendFlag kFlags[] = {kSizeFlag};

void read(config::FieldReader& reader, const nlohmann::json& backend,
          std::optional<uint32_t> block_size, BackendSpec& out) {
  read_size_key(reader, backend, block_size, /*required=*/true, kMaxMemDeviceSize, out);
}

// Memory that outlives the process: new for a new device, the kept one for
// a recovered device.
Result<std::unique_ptr<MemBackend>> open_kept(const DeviceSpec& spec, const BackendEnv& env) {
  const uint64_t size = spec.backend.size;
  auto fd = env.reopen ? env.memory->reopen(spec.name, size) : env.memory->create(spec.name, size);
  if (!fd) {
    return fd.error().wrap(env.reopen ? "memory kept by the last ublkd"
                                      : "memory in " + env.memory->describe());
  }
  return MemBackend::adopt(std::move(fd).value(), size);
}

Result<std::unique_ptr<Backend>> open(const DeviceSpec& spec, const BackendEnv& env) {
  auto m = env.memory != nullptr && spec.recovery ? open_kept(spec, env)
                                                  : MemBackend::create(spec.backend.size);
  if (!m) return m.error();
  return std::unique_ptr<Backend>(std::move(m).value());
}

}  // namespace

const BackendType kMemBackendType = {
    .name = "mem",
    .keys = kKeys,
    .flags = kFlags,
    .caps = {.reissue_safe = true, .keeps_memory = true},
    .read = read,
    .write = write_size_key,
    .view = view_nothing,
    .open = open,
};

}  // namespace ublkd
