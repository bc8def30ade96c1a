// "nbd": an export of an NBD server (NbdBackend), one connection per queue.
// Its keys: uri (required) and three durations, each in seconds as a JSON
// number (like ublkd.json's start_timeout) or a string with a unit
// ("500ms", "10s", "2min"), as ublkctl passes them.
#include <cmath>
#include <string>

#include "backend/nbd_backend.h"
#include "backends/backend_type.h"
#include "base/size.h"

namespace ublkd {

namespace {

constexpr std::string_view kKeys[] = {"type", "uri", "connect_timeout", "request_timeout",
                                      "reconnect_timeout"};
constexpr BackendFlag kFlags[] = {
    {"uri", "uri", BackendFlag::Sets::kValue, "--uri URI",
     "the export of an nbd backend: nbd://HOST[:PORT]/EXPORT,\n"
     "nbd+unix:///EXPORT?socket=PATH, nbds:// and nbds+unix:// for TLS"},
    {"connect-timeout", "connect_timeout", BackendFlag::Sets::kValue, "--connect-timeout TIME",
     "nbd: how long a connection may take (default 10s;\nseconds, or 500ms, 2min)"},
    {"request-timeout", "request_timeout", BackendFlag::Sets::kValue, "--request-timeout TIME",
     "nbd: a request unanswered this long fails with EIO\n(default 30s; 0: never)"},
    {"reconnect-timeout", "reconnect_timeout", BackendFlag::Sets::kValue,
     "--reconnect-timeout TIME",
     "nbd: how long a lost connection is retried before\nheld requests fail (default 60s)"},
};

struct Duration {
  std::string_view key;
  int64_t default_ms;
  int64_t max_ms;
  bool zero_allowed;
};

// 0 for request_timeout: requests never time out; for reconnect_timeout:
// held requests fail as soon as the connection is lost.
constexpr Duration kConnectTimeout{"connect_timeout", 10'000, 300'000, false};
constexpr Duration kRequestTimeout{"request_timeout", 30'000, 3'600'000, true};
constexpr Duration kReconnectTimeout{"reconnect_timeout", 60'000, 86'400'000, true};
constexpr const Duration* kDurations[] = {&kConnectTimeout, &kRequestTimeout, &kReconnectTimeout};

// "2.5" (seconds), "500ms", "10s", "2min" -> milliseconds, unrounded.
std::optional<double> parse_duration_text(const std::string& text) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (...) {
    return std::nullopt;
  }
  if (!std::isfinite(v) || v < 0 || (used > 0 && (text[0] == ' ' || text[0] == '+'))) return {};
  const std::string unit = text.substr(used);
  double ms = 0;
  if (unit.empty() || unit == "s")
    ms = v * 1000.0;
  else if (unit == "ms")
    ms = v;
  else if (unit == "min")
    ms = v * 60'000.0;
  else
    return std::nullopt;
  if (ms > 1e15) return std::nullopt;
  return ms;
}

void read_duration(config::FieldReader& reader, const nlohmann::json& backend, const Duration& d,
                   BackendSpec& out) {
  const auto it = backend.find(std::string(d.key));
  if (it == backend.end()) return;
  const std::string field = "backend." + std::string(d.key);
  std::optional<double> exact_ms;
  if (it->is_number() && !it->is_boolean()) {
    const double s = it->get<double>();
    if (std::isfinite(s) && s >= 0 && s <= 1e12) exact_ms = s * 1000.0;
  } else if (it->is_string()) {
    exact_ms = parse_duration_text(it->get<std::string>());
  } else {
    reader.problem(field,
                   "expected seconds (a number) or a string such as \"500ms\" or \"10s\", "
                   "got " +
                       config::describe(*it));
    return;
  }
  if (!exact_ms) {
    reader.problem(field, config::dump_value(*it) +
                              " is not a duration (seconds, or a number with ms, s or min)");
    return;
  }
  const int64_t ms = std::llround(*exact_ms);
  if (ms == 0 && *exact_ms != 0) {
    reader.problem(field, config::dump_value(*it) + " is shorter than a millisecond");
    return;
  }
  if (ms == 0 && !d.zero_allowed) {
    reader.problem(field, "must be greater than 0, got " + config::dump_value(*it));
    return;
  }
  if (ms > d.max_ms) {
    reader.problem(field, config::dump_value(*it) + " exceeds the largest " + std::string(d.key) +
                              ", " + format_duration(std::chrono::milliseconds(d.max_ms)));
    return;
  }
  out.params[std::string(d.key)] = ms;
}

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
  for (const Duration* d : kDurations) read_duration(reader, backend, *d, out);
}

int64_t duration_ms(const BackendSpec& spec, const Duration& d) {
  const auto it = spec.params.find(std::string(d.key));
  return it != spec.params.end() && it->is_number_integer() ? it->get<int64_t>() : d.default_ms;
}

std::string uri_of(const BackendSpec& spec) {
  const auto it = spec.params.find("uri");
  return it != spec.params.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// Whole seconds as a number, anything else as "NNNms": read() gives the
// same milliseconds back.
nlohmann::json duration_json(int64_t ms) {
  if (ms % 1000 == 0) return ms / 1000;
  return std::to_string(ms) + "ms";
}

void write(const BackendSpec& spec, nlohmann::json& out) {
  out["uri"] = uri_of(spec);
  for (const Duration* d : kDurations) {
    if (spec.params.contains(std::string(d->key)))
      out[std::string(d->key)] = duration_json(duration_ms(spec, *d));
  }
}

void view(const BackendSpec& spec, nlohmann::json& out) {
  out["uri"] = nbd_shown_uri(uri_of(spec));
  for (const Duration* d : kDurations) out[std::string(d->key) + "_ms"] = duration_ms(spec, *d);
}

Result<std::unique_ptr<Backend>> open(const DeviceSpec& spec, const BackendEnv&) {
  NbdBackendOptions o;
  o.uri = uri_of(spec.backend);
  o.connect_timeout = std::chrono::milliseconds(duration_ms(spec.backend, kConnectTimeout));
  o.request_timeout = std::chrono::milliseconds(duration_ms(spec.backend, kRequestTimeout));
  o.reconnect_timeout = std::chrono::milliseconds(duration_ms(spec.backend, kReconnectTimeout));
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
