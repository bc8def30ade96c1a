// What the parts of ublkctl (help.cpp, args.cpp, render.cpp, commands.cpp)
// share; not for use outside daemon/ctl.
#pragma once

#include <cerrno>
#include <cstddef>
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

inline std::string dump(const nlohmann::json& value, int indent = -1) {
  return value.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

inline std::string pretty(const nlohmann::json& value) {
  return dump(value, 2) + "\n";
}

}  // namespace ublkd::ctl
