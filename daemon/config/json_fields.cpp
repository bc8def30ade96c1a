#include "config/json_fields.h"

#include <algorithm>

#include "base/size.h"

namespace ublkd::config {

namespace {

constexpr size_t kMaxShownValue = 64;

// Byte offset into `text` -> "line L, column C", both 1-based. Columns count
// UTF-8 characters rather than bytes so they match what an editor shows.
std::string position(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  size_t line = 1;
  size_t line_start = 0;
  for (size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  size_t column = 1;
  for (size_t i = line_start; i < offset; ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) ++column;
  }
  return "line " + std::to_string(line) + ", column " + std::to_string(column);
}

// nlohmann's message is "[json.exception.parse_error.101] parse error at line
// 2, column 8: syntax error while parsing value - unexpected ','; ...". The
// position is computed separately, so keep only what follows it.
std::string parse_error_reason(const char* what) {
  std::string_view s(what);
  if (size_t at = s.find("parse error"); at != std::string_view::npos) {
    s.remove_prefix(at);
    if (size_t colon = s.find(": "); colon != std::string_view::npos) {
      s.remove_prefix(colon + 2);
    }
  }
  // "syntax error while parsing object - " says nothing the rest does not.
  constexpr std::string_view kNoise = "syntax error while parsing ";
  if (s.substr(0, kNoise.size()) == kNoise) {
    if (size_t dash = s.find(" - "); dash != std::string_view::npos) s.remove_prefix(dash + 3);
  }
  return std::string(s);
}

}  // namespace

size_t json_nesting_depth(std::string_view text, size_t limit) {
  size_t depth = 0;
  size_t deepest = 0;
  bool in_string = false;
  bool escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

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
  if (json_nesting_depth(text) > kMaxJsonDepth) {
    problem("", "invalid JSON: nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    return std::nullopt;
  }
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    // e.byte is the 1-based position of the last character read, which is
    // where the parser noticed the mistake (or one past the end of input).
    const size_t offset = e.byte > 0 ? e.byte - 1 : 0;
    problem("", "invalid JSON at " + position(text, offset) + ": " + parse_error_reason(e.what()));
  } catch (const nlohmann::json::exception& e) {
    // Not a syntax error, e.g. a number too large for a double.
    problem("", std::string("invalid JSON: ") + e.what());
  }
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

std::optional<std::string> FieldReader::string(const nlohmann::json& object,
                                               std::string_view prefix, std::string_view key,
                                               bool required) {
  const nlohmann::json* v = find(object, prefix, key, required);
  if (v == nullptr) return std::nullopt;
  if (!v->is_string()) {
    problem(join_path(prefix, key), "expected a string, got " + describe(*v));
    return std::nullopt;
  }
  return v->get<std::string>();
}

std::optional<bool> FieldReader::boolean(const nlohmann::json& object, std::string_view prefix,
                                         std::string_view key, bool required) {
  const nlohmann::json* v = find(object, prefix, key, required);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) {
    problem(join_path(prefix, key), "expected true or false, got " + describe(*v));
    return std::nullopt;
  }
  return v->get<bool>();
}

std::optional<uint64_t> FieldReader::integer(const nlohmann::json& object, std::string_view prefix,
                                             std::string_view key, bool required, uint64_t min,
                                             uint64_t max) {
  const nlohmann::json* v = find(object, prefix, key, required);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer()) {
    problem(join_path(prefix, key), "expected an integer, got " + describe(*v));
    return std::nullopt;
  }
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
