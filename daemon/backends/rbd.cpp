// "rbd": an image of a Ceph cluster (RbdBackend). Its keys: image (required;
// "IMAGE" with "pool" and "namespace" beside it, or the rbd tool's
// "POOL/IMAGE" and "POOL/NAMESPACE/IMAGE"), the cluster's conf, cluster
// name, client_id and keyring (secrets only ever by file), create and size
// (a missing image is created), and two durations (duration_keys.h).
#include <string>

#include "backend/rbd_backend.h"
#include "backends/backend_type.h"
#include "backends/duration_keys.h"

namespace ublkd {

namespace {

constexpr std::string_view kKeys[] = {
    "type",    "image",  "pool", "namespace",       "conf",      "cluster", "client_id",
    "keyring", "create", "size", "connect_timeout", "op_timeout"};

constexpr DurationKey kRbdConnectTimeout{"connect_timeout", 30'000, 300'000, false};
constexpr DurationKey kOpTimeout{"op_timeout", 30'000, 3'600'000, false};
constexpr const DurationKey* kDurations[] = {&kRbdConnectTimeout, &kOpTimeout};

constexpr BackendFlag kFlags[] = {
    kSizeFlag,
    kCreateFlag,
    {"image", "image", BackendFlag::Sets::kValue, "--image POOL/IMAGE",
     "the image of an rbd backend (also POOL/NAMESPACE/IMAGE)"},
    {"ceph-conf", "conf", BackendFlag::Sets::kPath, "--ceph-conf FILE",
     "rbd: the cluster's ceph.conf (default: librados's search,\n/etc/ceph/ceph.conf)"},
    {"client-id", "client_id", BackendFlag::Sets::kValue, "--client-id ID",
     "rbd: the cephx user, without \"client.\" (default admin)"},
    {"keyring", "keyring", BackendFlag::Sets::kPath, "--keyring FILE",
     "rbd: the user's keyring (default: what ceph.conf names)"},
    kConnectTimeoutFlag,
    {"op-timeout", "op_timeout", BackendFlag::Sets::kValue, "--op-timeout TIME",
     "rbd: an operation the cluster leaves unanswered this\nlong fails with EIO (default 30s)"},
};

// Ceph's names: no "/" (it separates pool, namespace and image) and no
// "@" (a snapshot, which a writable device cannot serve).
std::string name_problem(const std::string& v) {
  if (v.empty()) return "is empty";
  if (v.find('\0') != std::string::npos) return "contains a NUL character";
  if (v.find('@') != std::string::npos) return "names a snapshot (\"@\"); ublkd serves images";
  if (v.find('/') != std::string::npos) return "contains \"/\"";
  return {};
}

void read_name(config::FieldReader& reader, const std::string& field, const std::string& v,
               const char* key, BackendSpec& out) {
  if (const std::string p = name_problem(v); !p.empty()) {
    reader.problem(field, config::dump_value(nlohmann::json(v)) + " " + p);
    return;
  }
  out.params[key] = v;
}

// "image" on its own, or the pool (and namespace) in it as the rbd tool
// writes them; not both ways at once.
void read_image(config::FieldReader& reader, const nlohmann::json& backend, BackendSpec& out) {
  auto image = reader.string(backend, "backend", "image", /*required=*/true);
  auto pool = reader.string(backend, "backend", "pool", /*required=*/false);
  auto ns = reader.string(backend, "backend", "namespace", /*required=*/false);
  if (!image) return;
  const size_t first = image->find('/');
  if (first == std::string::npos) {
    read_name(reader, "backend.image", *image, "image", out);
    read_name(reader, "backend.pool", pool.value_or("rbd"), "pool", out);
    if (ns && !ns->empty()) read_name(reader, "backend.namespace", *ns, "namespace", out);
    return;
  }
  if (pool || ns) {
    reader.problem("backend.image", config::dump_value(nlohmann::json(*image)) +
                                        " names its pool; leave out \"pool\" and \"namespace\"");
    return;
  }
  const size_t last = image->rfind('/');
  read_name(reader, "backend.image", image->substr(0, first), "pool", out);
  if (last != first)
    read_name(reader, "backend.image", image->substr(first + 1, last - first - 1), "namespace",
              out);
  read_name(reader, "backend.image", image->substr(last + 1), "image", out);
}

void read_path_key(config::FieldReader& reader, const nlohmann::json& backend, const char* key,
                   BackendSpec& out) {
  auto v = reader.string(backend, "backend", key, /*required=*/false);
  if (!v) return;
  const std::string field = "backend." + std::string(key);
  // The daemon's working directory is /: ublkctl makes its paths absolute.
  if (v->empty() || v->front() != '/') {
    reader.problem(field, config::dump_value(nlohmann::json(*v)) + " is not an absolute path");
  } else if (v->find('\0') != std::string::npos) {
    reader.problem(field, "contains a NUL character");
  } else {
    out.params[key] = *v;
  }
}

void read_client(config::FieldReader& reader, const nlohmann::json& backend, BackendSpec& out) {
  auto cluster = reader.string(backend, "backend", "cluster", /*required=*/false);
  if (cluster) read_name(reader, "backend.cluster", *cluster, "cluster", out);
  auto id = reader.string(backend, "backend", "client_id", /*required=*/false);
  if (!id) return;
  if (id->starts_with("client.")) {
    reader.problem("backend.client_id", config::dump_value(nlohmann::json(*id)) +
                                            ": give the id without \"client.\" (" + id->substr(7) +
                                            ")");
    return;
  }
  read_name(reader, "backend.client_id", *id, "client_id", out);
}

void read(config::FieldReader& reader, const nlohmann::json& backend,
          std::optional<uint32_t> block_size, BackendSpec& out) {
  read_image(reader, backend, out);
  read_path_key(reader, backend, "conf", out);
  read_path_key(reader, backend, "keyring", out);
  read_client(reader, backend, out);
  if (auto create = reader.boolean(backend, "backend", "create", false)) out.create = *create;
  const bool size_given = backend.contains("size");
  read_size_key(reader, backend, block_size, /*required=*/false, kMaxDeviceSize, out);
  if (out.create && !size_given) {
    reader.problem("backend.size", "required with \"create\": true (the size of the new image)");
  } else if (!out.create && size_given) {
    reader.problem("backend.size",
                   "only with \"create\": true; an existing image's own size is the device's");
  }
  for (const DurationKey* d : kDurations) read_duration_key(reader, backend, *d, out);
}

std::string param(const BackendSpec& spec, const char* key, const char* fallback = "") {
  const auto it = spec.params.find(key);
  return it != spec.params.end() && it->is_string() ? it->get<std::string>()
                                                    : std::string(fallback);
}

void write(const BackendSpec& spec, nlohmann::json& out) {
  for (const char* key :
       {"pool", "namespace", "image", "conf", "cluster", "client_id", "keyring"}) {
    if (spec.params.contains(key)) out[key] = param(spec, key);
  }
  if (spec.create) {
    out["create"] = true;
    out["size"] = spec.size;
  }
  for (const DurationKey* d : kDurations) write_duration_key(spec, *d, out);
}

RbdBackendOptions options_of(const DeviceSpec& spec, bool take_over = false) {
  const BackendSpec& b = spec.backend;
  RbdBackendOptions o;
  o.pool = param(b, "pool", "rbd");
  o.pool_namespace = param(b, "namespace");
  o.image = param(b, "image");
  o.conf = param(b, "conf");
  o.cluster = param(b, "cluster", "ceph");
  o.client_id = param(b, "client_id", "admin");
  o.keyring = param(b, "keyring");
  o.create_size = b.create ? b.size : 0;
  o.connect_timeout = std::chrono::milliseconds(duration_key_ms(b, kRbdConnectTimeout));
  o.op_timeout = std::chrono::milliseconds(duration_key_ms(b, kOpTimeout));
  o.logical_block_size = spec.logical_block_size;
  o.read_only = spec.read_only;
  o.take_over = take_over;
  return o;
}

void view(const BackendSpec& spec, nlohmann::json& out) {
  DeviceSpec d;
  d.backend = spec;
  const RbdBackendOptions o = options_of(d);
  out["image"] = rbd_image_spec(o);
  out["cluster"] = o.cluster;
  out["client_id"] = o.client_id;
  if (!o.conf.empty()) out["conf"] = o.conf;
  if (!o.keyring.empty()) out["keyring"] = o.keyring;
  for (const DurationKey* d : kDurations)
    out[std::string(d->key) + "_ms"] = duration_key_ms(spec, *d);
}

// A recovery takes the lock over from the device's own dead process.
Result<std::unique_ptr<Backend>> open(const DeviceSpec& spec, const BackendEnv& env) {
  return as_backend(RbdBackend::open(options_of(spec, env.reopen)));
}

}  // namespace

// Reissue-safe: every request becomes one idempotent librbd operation.
extern const BackendType kRbdBackendType = {"rbd", kKeys, kFlags, {.reissue_safe = true},
                                            read,  write, view,   open};

}  // namespace ublkd
