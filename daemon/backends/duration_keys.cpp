#include "backends/duration_keys.h"

#include <cmath>
#include <optional>
#include <string>

#include "base/size.h"

namespace ublkd {

namespace {

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

// Whole seconds as a number, anything else as "NNNms".
nlohmann::json duration_json(int64_t ms) {
  if (ms % 1000 == 0) return ms / 1000;
  return std::to_string(ms) + "ms";
}

}  // namespace

void read_duration_key(config::FieldReader& reader, const nlohmann::json& backend,
                       const DurationKey& d, BackendSpec& out) {
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

int64_t duration_key_ms(const BackendSpec& spec, const DurationKey& d) {
  const auto it = spec.params.find(std::string(d.key));
  return it != spec.params.end() && it->is_number_integer() ? it->get<int64_t>() : d.default_ms;
}

void write_duration_key(const BackendSpec& spec, const DurationKey& d, nlohmann::json& out) {
  if (spec.params.contains(std::string(d.key)))
    out[std::string(d.key)] = duration_json(duration_key_ms(spec, d));
}

}  // namespace ublkd
