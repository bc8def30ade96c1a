// "mem": a RAM disk (MemBackend). With recovery on, its memory is kept
// where a restarted ublkd finds it again (BackendEnv::memory).
#include "backend/mem_backend.h"
#include "backends/backend_type.h"

namespace ublkd {

namespace {

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
  return as_backend(env.memory != nullptr && spec.recovery ? open_kept(spec, env)
                                                           : MemBackend::create(spec.backend.size));
}

}  // namespace

extern const BackendType kMemBackendType = {
    "mem", kSizeOnlyKeys,  kSizeOnlyFlags, {.reissue_safe = true, .keeps_memory = true},
    read,  write_size_key, view_nothing,   open};

}  // namespace ublkd
