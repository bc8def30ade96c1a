#include "config/json_fields.h"

#include <algorithm>

#include "base/size.h"
#include "common/json_text.h"

namespace ublkd::config {

namespace {

constexpr size_t kMaxShownValue = 64;

}  // namespace

std::string dump_value(const nlohmann::json& value) {
  std::string s = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > kMaxShownValue) {
    s.resize(kMaxShownValue);
    s += "...";
  }
  return s;
}

std::string describe(const nlohmann::json& value) {
  if (value.is_null()) return "null";
  return std::string(value.type_name()) + " " + dump_value(value);
}

std::string join_path(std::string_view prefix, std::string_view key) {
  std::string path(prefix);
  if (!path.empty()) path += '.';
  path += key;
  return path;
}

void FieldReader::problem(std::string field, std::string message) {
  problems_.push_back(ConfigProblem{origin_, std::move(field), std::move(message)});
}

std::optional<nlohmann::json> FieldReader::parse(std::string_view text) {
  if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    problem("", "invalid JSON: the document is empty");
    return std::nullopt;
  }
  if (json_text::nesting_depth(text) > json_text::kMaxDepth) {
    problem("",
            "invalid JSON: nested deeper than " + std::to_string(json_text::kMaxDepth) + " levels");
    return std::nullopt;
  }
  auto parsed = json_text::parse(text, json_text::Columns::kCharacters);
  if (parsed) return std::move(parsed).value();
  const json_text::ParseFailure& f = parsed.error();
  // Not a syntax error (no place), e.g. a number too large for a double.
  problem("", f.at ? "invalid JSON at " + json_text::describe(*f.at) + ": " + f.reason
                   : "invalid JSON: " + f.reason);
  return std::nullopt;
}

bool FieldReader::expect_object(const nlohmann::json& value, std::string_view field) {
  if (value.is_object()) return true;
  problem(std::string(field), "expected an object, got " + describe(value));
  return false;
}

void FieldReader::reject_unknown_keys(const nlohmann::json& object, std::string_view prefix,
                                      const std::vector<std::string_view>& known) {
  for (const auto& item : object.items()) {
    const std::string& key = item.key();
    if (std::find(known.begin(), known.end(), key) != known.end()) continue;
    std::string message = "unknown key \"" + key + "\" (expected ";
    bool first = true;
    for (std::string_view k : known) {
      if (!first) message += ", ";
      message += k;
      first = false;
    }
    message += ")";
    problem(join_path(prefix, key), std::move(message));
  }
}

const nlohmann::json* FieldReader::find(const nlohmann::json& object, std::string_view prefix,
                                        std::string_view key, bool required) {
  auto it = object.find(std::string(key));
  if (it != object.end()) return &*it;
  if (required) problem(join_path(prefix, key), "required field is missing");
  return nullptr;
}

const nlohmann::json* FieldReader::find_typed(const nlohmann::json& object, std::string_view prefix,
                                              std::string_view key, bool required,
                                              bool (*fits)(const nlohmann::json&),
                                              std::string_view expected) {
  const nlohmann::json* v = find(object, prefix, key, required);
  if (v == nullptr || fits(*v)) return v;
  problem(join_path(prefix, key), "expected " + std::string(expected) + ", got " + describe(*v));
  return nullptr;
}

std::optional<std::string> FieldReader::string(const nlohmann::json& object,
                                               std::string_view prefix, std::string_view key,
                                               bool required) {
  auto fits = [](const nlohmann::json& v) { return v.is_string(); };
  const nlohmann::json* v = find_typed(object, prefix, key, required, fits, "a string");
  if (v == nullptr) return std::nullopt;
  return v->get<std::string>();
}

std::optional<bool> FieldReader::boolean(const nlohmann::json& object, std::string_view prefix,
                                         std::string_view key, bool required) {
  auto fits = [](const nlohmann::json& v) { return v.is_boolean(); };
  const nlohmann::json* v = find_typed(object, prefix, key, required, fits, "true or false");
  if (v == nullptr) return std::nullopt;
  return v->get<bool>();
}

std::optional<uint64_t> FieldReader::integer(const nlohmann::json& object, std::string_view prefix,
                                             std::string_view key, bool required, uint64_t min,
                                             uint64_t max) {
  auto fits = [](const nlohmann::json& v) { return v.is_number_integer(); };
  const nlohmann::json* v = find_typed(object, prefix, key, required, fits, "an integer");
  if (v == nullptr) return std::nullopt;
  // Documents built in code may hold non-negative values as signed integers.
  const bool negative = !v->is_number_unsigned() && v->get<int64_t>() < 0;
  const uint64_t n = negative ? 0 : v->get<uint64_t>();
  if (negative || n < min || n > max) {
    problem(join_path(prefix, key), dump_value(*v) + " is out of range " + std::to_string(min) +
                                        ".." + std::to_string(max));
    return std::nullopt;
  }
  return n;
}

std::optional<double> FieldReader::positive_number(const nlohmann::json& object,
                                                   std::string_view prefix, std::string_view key,
                                                   bool required, uint64_t max) {
  const nlohmann::json* v = find(object, prefix, key, required);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) {
    problem(join_path(prefix, key), "expected a number, got " + describe(*v));
    return std::nullopt;
  }
  const double d = v->get<double>();
  if (!(d > 0 && d <= static_cast<double>(max))) {
    problem(join_path(prefix, key), dump_value(*v) +
                                        " is out of range (must be greater than 0 and at most " +
                                        std::to_string(max) + ")");
    return std::nullopt;
  }
  return d;
}

std::optional<uint64_t> FieldReader::size(const nlohmann::json& object, std::string_view prefix,
                                          std::string_view key, bool required) {
  const nlohmann::json* v = find(object, prefix, key, required);
  if (v == nullptr) return std::nullopt;
  if (v->is_number_unsigned()) return v->get<uint64_t>();
  if (v->is_number_integer()) {
    const int64_t n = v->get<int64_t>();
    if (n >= 0) return static_cast<uint64_t>(n);
    problem(join_path(prefix, key), "must not be negative, got " + dump_value(*v));
    return std::nullopt;
  }
  if (v->is_string()) {
    Result<uint64_t> bytes = parse_size(v->get<std::string>());
    if (bytes) return bytes.value();
    problem(join_path(prefix, key), bytes.error().message());
    return std::nullopt;
  }
  problem(join_path(prefix, key),
          "expected integer bytes or a size string such as \"256MiB\", got " + describe(*v));
  return std::nullopt;
}

}  // namespace ublkd::config
