// ublkctl's output: what each command prints for a successful result, as
// text for people or JSON for scripts.
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <map>
#include <optional>
#include <utility>

#include "base/size.h"
#include "ctl/commands.h"
#include "ctl/internal.h"
#include "ublkd_version.h"

namespace ublkd::ctl {

namespace {

using nlohmann::json;

// One value as a table cell or an info line shows it: "-" for nothing.
std::string scalar_text(const json& value) {
  if (value.is_null()) return "-";
  if (value.is_string()) return value.get<std::string>();
  if (value.is_boolean()) return value.get<bool>() ? "true" : "false";
  if (value.is_array() &&
      std::all_of(value.begin(), value.end(), [](const json& v) { return v.is_string(); })) {
    if (value.empty()) return "-";
    std::string joined;
    for (const json& v : value) {
      if (!joined.empty()) joined += ", ";
      joined += v.get<std::string>();
    }
    return joined;
  }
  return dump(value);
}

}  // namespace

std::optional<uint64_t> as_u64(const json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    return static_cast<uint64_t>(value.get<int64_t>());
  }
  return std::nullopt;
}

namespace {

std::string size_text(const json& value) {
  if (auto bytes = as_u64(value)) return format_size(*bytes);
  return scalar_text(value);
}

std::string hex(uint64_t value) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%" PRIx64, value);
  return buf;
}

}  // namespace

Error shape_error(std::string_view command, std::string_view what) {
  return Error(EPROTO, "unexpected result from ublkd for " + std::string(command) + ": " +
                           std::string(what));
}

std::string render_table(const std::vector<std::string_view>& titles,
                         const std::vector<bool>& right_aligned,
                         const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(titles.size());
  for (size_t c = 0; c < titles.size(); ++c) width[c] = titles[c].size();
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  auto emit = [&](const auto& cells) {
    std::string line;
    for (size_t c = 0; c < titles.size(); ++c) {
      std::string_view cell = cells[c];
      if (c > 0) line += "  ";
      const size_t pad = width[c] - cell.size();
      if (right_aligned[c]) line.append(pad, ' ');
      line += cell;
      if (!right_aligned[c] && c + 1 < titles.size()) line.append(pad, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line;
    out += '\n';
  };
  emit(titles);
  for (const auto& row : rows) emit(row);
  return out;
}

namespace {

std::string render_pairs(const std::vector<std::pair<std::string, std::string>>& pairs) {
  size_t width = 0;
  for (const auto& [key, value] : pairs) width = std::max(width, key.size());
  std::string out;
  for (const auto& [key, value] : pairs) {
    out += key;
    out += ':';
    out.append(width - key.size() + 1, ' ');
    out += value;
    out += '\n';
  }
  return out;
}

Result<std::string> format_list(const json& result) {
  const json& devices = member(result, "devices");
  if (!devices.is_array()) return shape_error("list", "no \"devices\" array");
  std::vector<std::vector<std::string>> rows;
  for (const json& d : devices) {
    if (!d.is_object()) return shape_error("list", "a device is not an object");
    rows.push_back({
        scalar_text(member(d, "name")),
        scalar_text(member(d, "id")),
        scalar_text(member(d, "state")),
        scalar_text(member(member(d, "backend"), "type")),
        size_text(member(d, "size")),
        scalar_text(member(d, "queues")),
        scalar_text(member(d, "queue_depth")),
        scalar_text(member(d, "block_device")),
    });
  }
  return render_table({"NAME", "ID", "STATE", "BACKEND", "SIZE", "QUEUES", "DEPTH", "DEVICE"},
                      {false, true, false, false, true, true, true, false}, rows);
}

// Nested objects become dotted keys; `first` keys lead in the given order,
// the rest follow sorted, so fields added to the protocol later still show.
void flatten(const json& object, const std::string& prefix, const std::vector<std::string>& first,
             std::vector<std::pair<std::string, std::string>>& out,
             const std::map<std::string, std::string>& overrides) {
  std::vector<std::string> keys;
  for (const std::string& k : first) {
    if (object.contains(k)) keys.push_back(k);
  }
  for (const auto& item : object.items()) {
    if (std::find(first.begin(), first.end(), item.key()) == first.end()) {
      keys.push_back(item.key());
    }
  }
  for (const std::string& k : keys) {
    const std::string key = prefix.empty() ? k : prefix + "." + k;
    const json& value = object[k];
    if (auto o = overrides.find(key); o != overrides.end()) {
      if (!o->second.empty()) out.emplace_back(key, o->second);
    } else if (value.is_object() && !value.empty()) {
      flatten(value, key,
              key == "backend" ? std::vector<std::string>{"type", "path", "direct_io"}
                               : std::vector<std::string>{},
              out, overrides);
    } else {
      out.emplace_back(key, scalar_text(value));
    }
  }
}

Result<std::string> format_info(const json& device) {
  if (!device.is_object()) return shape_error("info", "the device is not an object");
  std::map<std::string, std::string> overrides;
  if (auto bytes = as_u64(member(device, "size"))) {
    std::string text = format_size(*bytes);
    if (*bytes >= 1024) text += " (" + std::to_string(*bytes) + " bytes)";
    overrides["size"] = text;
  }
  if (auto flags = as_u64(member(device, "kernel_flags"))) {
    std::string text = hex(*flags);
    const json& names = member(device, "kernel_flag_names");
    if (names.is_array() && !names.empty()) text += " (" + scalar_text(names) + ")";
    overrides["kernel_flags"] = text;
    overrides["kernel_flag_names"] = "";  // shown with kernel_flags
  }
  std::vector<std::pair<std::string, std::string>> pairs;
  flatten(device, "",
          {"name", "id", "state", "error", "backend", "size", "queues", "queue_depth",
           "logical_block_size", "read_only", "block_device", "persistent", "source",
           "kernel_flags", "kernel_flag_names"},
          pairs, overrides);
  return render_pairs(pairs);
}

Result<std::string> format_features(const json& result) {
  if (!result.is_object()) return shape_error("features", "the result is not an object");
  const json& value = member(result, "value");
  const json& hex_text = member(result, "hex");
  std::string shown;
  if (hex_text.is_string()) {
    shown = hex_text.get<std::string>();
  } else if (auto v = as_u64(value)) {
    shown = hex(*v);
  } else {
    return shape_error("features", "no feature value");
  }
  std::vector<std::pair<uint64_t, std::string>> bits;
  const json& known = member(result, "known");
  if (!known.is_null() && !known.is_array())
    return shape_error("features", "\"known\" is not an array");
  for (const json& k : known.is_array() ? known : json::array()) {
    auto bit = as_u64(member(k, "bit"));
    if (!bit) return shape_error("features", "a known feature has no bit");
    bits.emplace_back(*bit, scalar_text(member(k, "name")));
  }
  const json& unknown = member(result, "unknown_bits");
  if (!unknown.is_null() && !unknown.is_array()) {
    return shape_error("features", "\"unknown_bits\" is not an array");
  }
  for (const json& b : unknown.is_array() ? unknown : json::array()) {
    auto bit = as_u64(b);
    if (!bit) return shape_error("features", "an unknown bit is not a number");
    bits.emplace_back(*bit, "unknown to this ublkd");
  }
  std::sort(bits.begin(), bits.end());
  size_t width = 0;
  for (const auto& b : bits) width = std::max(width, std::to_string(b.first).size());

  std::string out = "features: " + shown + "\n";
  for (const auto& [bit, name] : bits) {
    const std::string n = std::to_string(bit);
    out += "bit " + std::string(width - n.size(), ' ') + n + ": " + name + "\n";
  }
  if (const json& ioctl = member(result, "ioctl_encoding"); !ioctl.is_null()) {
    out += "ioctl_encoding: " + scalar_text(ioctl) + "\n";
  }
  return out;
}

Result<std::string> format_reload(const json& result) {
  if (!result.is_object()) return shape_error("reload", "the result is not an object");
  struct Section {
    const char* key;
    const char* label;
    const char* detail;  // the field that explains an object entry
  };
  static constexpr Section kSections[] = {
      {"started", "started", nullptr},   {"failed", "failed", "error"},
      {"changed", "changed", "message"}, {"orphaned", "orphaned", nullptr},
      {"problems", "problem", nullptr},
  };
  std::string out;
  for (const Section& s : kSections) {
    const json& list = member(result, s.key);
    if (list.is_null()) continue;
    if (!list.is_array())
      return shape_error("reload", std::string(in_quotes(s.key)) + " is not an array");
    for (const json& item : list) {
      std::string line = std::string(s.label) + ": ";
      if (item.is_object()) {
        line += scalar_text(member(item, "name"));
        if (s.detail != nullptr && member(item, s.detail).is_string()) {
          line += ": " + member(item, s.detail).get<std::string>();
        }
      } else {
        line += scalar_text(item);
      }
      out += line + "\n";
    }
  }
  if (out.empty()) out = "nothing changed\n";
  return out;
}

std::string format_version(const json& result) {
  std::string out = std::string("ublkctl ") + UBLKD_VERSION + "\n";
  out += "ublkd " + scalar_text(member(result, "version"));
  if (const json& api = member(result, "api"); !api.is_null())
    out += " (api " + scalar_text(api) + ")";
  return out + "\n";
}

// nlohmann says "[json.exception.parse_error.101] parse error at line 1,
// column 9: syntax error while parsing object - unexpected '}'; expected

}  // namespace

Result<std::string> format_result(std::string_view command, const json& result, bool json_out) {
  if (command == "list") {
    if (!json_out) return format_list(result);
    const json& devices = member(result, "devices");
    if (!devices.is_array()) return shape_error("list", "no \"devices\" array");
    return pretty(devices);
  }
  if (command == "version") {
    if (!json_out) return format_version(result);
    json both = json::object();
    both["ublkctl"] = {{"version", UBLKD_VERSION}};
    both["ublkd"] = result;
    return pretty(both);
  }
  if (json_out) return pretty(result);
  if (command == "add") {
    // A live device always has its block device; the name is the next best
    // thing to print, as the device does exist.
    if (const json& dev = member(result, "block_device"); dev.is_string()) {
      return dev.get<std::string>() + "\n";
    }
    if (const json& name = member(result, "name"); name.is_string()) {
      return name.get<std::string>() + "\n";
    }
    return shape_error("add", "the device has neither block_device nor name");
  }
  if (command == "del") {
    // Removed, but held open: say why /dev/ublkbN is not free yet.
    const json& state = member(result, "state");
    const json& id = member(result, "id");
    if (state.is_string() && state.get<std::string>() == "removed-pending" && id.is_number()) {
      const std::string dev = "/dev/ublkb" + std::to_string(id.get<uint64_t>());
      return "removed; " + dev +
             " is still open (a mount or a process): the kernel releases it "
             "when its last user closes it\n";
    }
    return std::string();
  }
  if (command == "resize") {
    const json& size = member(result, "size");
    const json& dev = member(result, "block_device");
    if (!size.is_number_unsigned() || !dev.is_string())
      return shape_error("resize", "the device has no size or block_device");
    const uint64_t bytes = size.get<uint64_t>();
    return dev.get<std::string>() + ": " + format_size(bytes) + " (" + std::to_string(bytes) +
           " bytes)\n";
  }
  if (command == "stats") return format_stats(result);
  if (command == "info") return format_info(result);
  if (command == "features") return format_features(result);
  if (command == "reload") return format_reload(result);
  if (command == "upgrade") {
    const json& names = member(result, "handed_over");
    if (!names.is_array()) return shape_error("upgrade", "\"handed_over\" is not an array");
    std::string list;
    for (const json& n : names) {
      if (!n.is_string()) return shape_error("upgrade", "a device name is not a string");
      list += (list.empty() ? "" : ", ") + n.get<std::string>();
    }
    return "handed over " + std::to_string(names.size()) + " device(s)" +
           (list.empty() ? std::string() : ": " + list) +
           "; ublkd exits, the next ublkd recovers them\n";
  }
  return pretty(result);
}

}  // namespace ublkd::ctl
