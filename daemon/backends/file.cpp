// "file": a regular file or a block device (FileBackend), served through
// the queue's io_uring.
#include "backend/file_backend.h"
#include "backends/backend_type.h"

namespace ublkd {

namespace {

constexpr std::string_view kKeys[] = {"type", "path", "size", "create", "direct_io", "zero_copy"};
constexpr BackendFlag kFlags[] = {
    kSizeFlag,
    {"path", "path", BackendFlag::Sets::kPath, "--path FILE",
     "the backing file of a file backend (relative to the\ncurrent directory)"},
    kCreateFlag,
    {"buffered", "direct_io", BackendFlag::Sets::kFalse, "--buffered",
     "go through the page cache instead of using O_DIRECT"},
};

void read_path(config::FieldReader& reader, const nlohmann::json& backend, BackendSpec& out) {
  auto path = reader.string(backend, "backend", "path", /*required=*/true);
  if (!path) return;
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

void read(config::FieldReader& reader, const nlohmann::json& backend,
          std::optional<uint32_t> block_size, BackendSpec& out) {
  read_path(reader, backend, out);
  if (auto create = reader.boolean(backend, "backend", "create", false)) out.create = *create;
  if (auto direct = reader.boolean(backend, "backend", "direct_io", false)) out.direct_io = *direct;
  if (auto zc = reader.boolean(backend, "backend", "zero_copy", false)) out.zero_copy = *zc;
  const bool size_given = backend.contains("size");
  // Not required: 0 stands for the file's or block device's own size.
  read_size_key(reader, backend, block_size, /*required=*/false, kMaxDeviceSize, out);
  if (out.create && !size_given) {
    reader.problem("backend.size", "required with \"create\": true (the size of the new file)");
  }
}

void write(const BackendSpec& spec, nlohmann::json& out) {
  out["path"] = spec.path;
  if (spec.size != 0) out["size"] = spec.size;
  out["create"] = spec.create;
  out["direct_io"] = spec.direct_io;
  out["zero_copy"] = spec.zero_copy;
}

void view(const BackendSpec& spec, nlohmann::json& out) {
  out["path"] = spec.path;
  out["direct_io"] = spec.direct_io;
}

Result<std::unique_ptr<Backend>> open(const DeviceSpec& spec, const BackendEnv& env) {
  FileBackendOptions o;
  o.path = spec.backend.path;
  o.size = spec.backend.size;
  o.create = spec.backend.create;
  o.direct_io = spec.backend.direct_io;
  o.read_only = spec.read_only;
  o.logical_block_size = spec.logical_block_size;
  o.finish_resize = env.reopen;
  return as_backend(FileBackend::open(o));
}

}  // namespace

extern const BackendType kFileBackendType = {
    "file", kKeys, kFlags, {.reissue_safe = true, .zero_copy = true}, read, write, view, open};

}  // namespace ublkd
