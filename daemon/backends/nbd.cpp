// "nbd": an export of an NBD server (NbdBackend), one connection per queue.
// Its keys: uri (required) and three durations (duration_keys.h).
#include <string>

#include "backend/nbd_backend.h"
#include "backends/backend_type.h"
#include "backends/duration_keys.h"

namespace ublkd {

namespace {

constexpr std::string_view kKeys[] = {"type", "uri", "connect_timeout", "request_timeout",
                                      "reconnect_timeout"};
constexpr BackendFlag kFlags[] = {
    {"uri", "uri", BackendFlag::Sets::kValue, "--uri URI",
     "the export of an nbd backend: nbd://HOST[:PORT]/EXPORT,\n"
     "nbd+unix:///EXPORT?socket=PATH, nbds:// and nbds+unix:// for TLS"},
    kConnectTimeoutFlag,
    {"request-timeout", "request_timeout", BackendFlag::Sets::kValue, "--request-timeout TIME",
     "nbd: a request unanswered this long fails with EIO\n(default 30s; 0: never)"},
    {"reconnect-timeout", "reconnect_timeout", BackendFlag::Sets::kValue,
     "--reconnect-timeout TIME",
     "nbd: how long a lost connection is retried before\nheld requests fail (default 60s)"},
};

// 0 for request_timeout: requests never time out; for reconnect_timeout:
// held requests fail as soon as the connection is lost.
constexpr DurationKey kConnectTimeout{"connect_timeout", 10'000, 300'000, false};
constexpr DurationKey kRequestTimeout{"request_timeout", 30'000, 3'600'000, true};
constexpr DurationKey kReconnectTimeout{"reconnect_timeout", 60'000, 86'400'000, true};
constexpr const DurationKey* kDurations[] = {&kConnectTimeout, &kRequestTimeout,
                                             &kReconnectTimeout};

// Only the form is checked here; whether the server is there, and takes
// the export and the key, is for the connect, whose error names the URI.
void read_uri(config::FieldReader& reader, const nlohmann::json& backend, BackendSpec& out) {
  auto uri = reader.string(backend, "backend", "uri", /*required=*/true);
  if (!uri) return;
  static constexpr std::string_view kSchemes[] = {"nbd://",       "nbd+unix://",  "nbds://",
                                                  "nbds+unix://", "nbd+vsock://", "nbds+vsock://"};
  bool known = false;
  for (std::string_view s : kSchemes) known = known || uri->starts_with(s);
  const std::string shown = config::dump_value(nlohmann::json(nbd_shown_uri(*uri)));
  if (!known) {
    reader.problem("backend.uri", shown +
                                      " is not an NBD URI (nbd://, nbd+unix://, nbds://, "
                                      "nbds+unix://, nbd+vsock://, nbds+vsock://)");
  } else if (uri->find('\0') != std::string::npos) {
    reader.problem("backend.uri", "contains a NUL character");
  } else if (uri->starts_with("nbd+unix://") || uri->starts_with("nbds+unix://")) {
    if (uri->find("socket=") == std::string::npos)
      reader.problem("backend.uri", shown + " names no socket (?socket=/path/to.sock)");
    else
      out.params["uri"] = *uri;
  } else {
    out.params["uri"] = *uri;
  }
}

void read(config::FieldReader& reader, const nlohmann::json& backend, std::optional<uint32_t>,
          BackendSpec& out) {
  read_uri(reader, backend, out);
  for (const DurationKey* d : kDurations) read_duration_key(reader, backend, *d, out);
}

std::string uri_of(const BackendSpec& spec) {
  const auto it = spec.params.find("uri");
  return it != spec.params.end() && it->is_string() ? it->get<std::string>() : std::string();
}

void write(const BackendSpec& spec, nlohmann::json& out) {
  out["uri"] = uri_of(spec);
  for (const DurationKey* d : kDurations) write_duration_key(spec, *d, out);
}

void view(const BackendSpec& spec, nlohmann::json& out) {
  out["uri"] = nbd_shown_uri(uri_of(spec));
  for (const DurationKey* d : kDurations)
    out[std::string(d->key) + "_ms"] = duration_key_ms(spec, *d);
}

Result<std::unique_ptr<Backend>> open(const DeviceSpec& spec, const BackendEnv&) {
  NbdBackendOptions o;
  o.uri = uri_of(spec.backend);
  o.connect_timeout = std::chrono::milliseconds(duration_key_ms(spec.backend, kConnectTimeout));
  o.request_timeout = std::chrono::milliseconds(duration_key_ms(spec.backend, kRequestTimeout));
  o.reconnect_timeout = std::chrono::milliseconds(duration_key_ms(spec.backend, kReconnectTimeout));
  o.logical_block_size = spec.logical_block_size;
  o.read_only = spec.read_only;
  return as_backend(NbdBackend::open(o));
}

}  // namespace

// Reissue-safe: every NBD command is idempotent, and a reconnecting queue
// re-sends the ones it holds anyway.
extern const BackendType kNbdBackendType = {"nbd", kKeys, kFlags, {.reissue_safe = true},
                                            read,  write, view,   open};

}  // namespace ublkd
