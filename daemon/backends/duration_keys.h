// Keys of a "backend" object that hold a duration (a network backend's
// timeouts): seconds as a JSON number, like ublkd.json's start_timeout, or
// a string with a unit ("500ms", "10s", "2min"), as ublkctl passes them.
// Kept in BackendSpec::params as whole milliseconds.
#pragma once

#include <cstdint>
#include <string_view>

#include <nlohmann/json.hpp>

#include "backends/backend_type.h"
#include "config/device_spec.h"
#include "config/json_fields.h"

namespace ublkd {

struct DurationKey {
  std::string_view key;
  int64_t default_ms;
  int64_t max_ms;
  // Whether 0 is a value (the backend's "never" or "at once").
  bool zero_allowed;
};

// --connect-timeout, for every network backend.
inline constexpr BackendFlag kConnectTimeoutFlag = {
    "connect-timeout", "connect_timeout", BackendFlag::Sets::kValue, "--connect-timeout TIME",
    "nbd, rbd: how long connecting may take (default: nbd\n10s, rbd 30s; seconds, or 500ms, 2min)"};

// Reads backend[d.key], if there, into out.params, or records the problem
// naming the field and the value.
void read_duration_key(config::FieldReader& reader, const nlohmann::json& backend,
                       const DurationKey& d, BackendSpec& out);
// The key's milliseconds, or its default when the spec has none.
int64_t duration_key_ms(const BackendSpec& spec, const DurationKey& d);
// Writes the key, if the spec has it, so that read_duration_key() reads
// the same milliseconds back.
void write_duration_key(const BackendSpec& spec, const DurationKey& d, nlohmann::json& out);

}  // namespace ublkd
