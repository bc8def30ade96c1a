// What the parts of ublkctl (help.cpp, args.cpp, render.cpp, commands.cpp)
// share; not for use outside daemon/ctl.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"

namespace ublkd::ctl {

// A command of the command line.
struct CommandInfo {
  std::string_view name;
  size_t min_args;  // positional arguments
  size_t max_args;
  std::string_view help;
};

// The overview of `ublkctl --help`.
std::string_view global_help();
const CommandInfo* find_command(std::string_view name);

// The options of `add` that describe the device rather than its backend
// (the backends' own come from their rows of the backend table).
struct AddOption {
  std::string_view name;
  bool takes_value;
  // As `ublkctl add --help` shows it; "\n" starts a continuation line.
  std::string_view usage;
  std::string_view help;
};
std::span<const AddOption> device_add_options();

// A usage error: its message is the line after "ublkctl: ".
inline Error usage(std::string message) {
  return Error(EINVAL, std::move(message));
}

inline std::string in_quotes(std::string_view s) {
  std::string q = "\"";
  q += s;
  q += '"';
  return q;
}

// The member `key` of `object`, or null when there is no such member (or
// `object` is no object).
inline const nlohmann::json& member(const nlohmann::json& object, const std::string& key) {
  static const nlohmann::json kNull;
  if (!object.is_object()) return kNull;
  auto it = object.find(key);
  return it == object.end() ? kNull : *it;
}

// nlohmann stores a parsed 5 as unsigned but a constructed 5 as signed; both
// are the same JSON.
std::optional<uint64_t> as_u64(const nlohmann::json& value);

// A result without the shape the protocol promises for `command`.
Error shape_error(std::string_view command, std::string_view what);

// Left-aligned columns are padded except the last, so no line ends in blanks.
std::string render_table(const std::vector<std::string_view>& titles,
                         const std::vector<bool>& right_aligned,
                         const std::vector<std::vector<std::string>>& rows);

inline std::string dump(const nlohmann::json& value, int indent = -1) {
  return value.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

inline std::string pretty(const nlohmann::json& value) {
  return dump(value, 2) + "\n";
}

}  // namespace ublkd::ctl
