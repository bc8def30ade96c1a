#include "ctl/commands.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <utility>

#include "base/size.h"
#include "base/unique_fd.h"
#include "ctl/client.h"
#include "ublkd_version.h"

namespace ublkd::ctl {

namespace {

using nlohmann::json;

// The admin API refuses request lines over 1 MiB, so a larger spec could
// never be sent.
constexpr size_t kMaxSpecBytes = 1 << 20;

constexpr std::string_view kGlobalHelp =
    "Usage: ublkctl [--socket PATH] [--json] COMMAND [ARGS]\n"
    "Manage the block devices of a running ublkd.\n"
    "\n"
    "Commands:\n"
    "  add NAME --backend TYPE [OPTIONS]  create a device and wait until it is live\n"
    "  add --spec FILE [--persist]        create a device from a JSON device spec\n"
    "  list                               list the devices\n"
    "  info NAME                          show everything about one device\n"
    "  del NAME                           stop and delete a device\n"
    "  attach NAME                        bring up a drop-in and stay while it is live\n"
    "  features                           show the ublk features of the kernel\n"
    "  reload                             re-read the configuration directory\n"
    "  upgrade                            hand the devices over to the next ublkd\n"
    "  version                            show the versions of ublkctl and ublkd\n"
    "  help [COMMAND]                     show this help, or a command's\n"
    "\n"
    "Options (before or after the command):\n"
    "  --socket PATH   ublkd's admin socket (default: $UBLKD_SOCKET, else\n"
    "                  /run/ublkd/ublkd.sock)\n"
    "  --json          print the daemon's answer as JSON\n"
    "  -h, --help      show help; 'ublkctl COMMAND --help' for a command\n"
    "  -V, --version   show the version of ublkctl\n"
    "\n"
    "Exit status: 0 on success, 1 on any error (one line on standard error).\n";

constexpr std::string_view kAddHelp =
    "Usage: ublkctl add NAME --backend mem|file|null [OPTIONS]\n"
    "       ublkctl add --spec FILE [--persist]\n"
    "Create a device, wait until it is live and print its block device.\n"
    "Options left out take the daemon's defaults.\n"
    "\n"
    "  --backend TYPE    where the data lives: mem, file or null\n"
    "  --size SIZE       bytes, or with a unit: 256MiB, 1GiB (B, KiB, MiB, GiB, TiB)\n"
    "  --path FILE       the backing file of a file backend (relative to the\n"
    "                    current directory)\n"
    "  --create          create the backing file if it does not exist\n"
    "  --buffered        go through the page cache instead of using O_DIRECT\n"
    "  --queues N        hardware queues\n"
    "  --depth N         tags per queue\n"
    "  --block-size N    logical block size in bytes\n"
    "  --read-only       refuse writes\n"
    "  --no-recovery     let the device go with ublkd instead of keeping it\n"
    "                    quiesced for the next ublkd to recover\n"
    "  --spec FILE       the whole device spec as a JSON object, as in devices.d\n"
    "                    ('-' reads standard input); replaces NAME and the options\n"
    "                    above\n"
    "  --persist         also write the spec to devices.d, so that the device comes\n"
    "                    back when ublkd restarts\n"
    "\n"
    "With --json, prints the device object instead of the block device.\n";

constexpr std::string_view kListHelp =
    "Usage: ublkctl list\n"
    "List the devices, including those coming up, going away or failed.\n"
    "With --json, prints the array of device objects.\n";

constexpr std::string_view kInfoHelp =
    "Usage: ublkctl info NAME\n"
    "Show every field of a device, and the flags the kernel gave it.\n"
    "With --json, prints the device object.\n";

constexpr std::string_view kDelHelp =
    "Usage: ublkctl del [--if-exists] NAME\n"
    "Stop and delete a device. A drop-in it came from stays in devices.d;\n"
    "delete that file too to make the removal permanent.\n"
    "Prints nothing on success ({\"name\": NAME, \"state\": \"removed\"} with\n"
    "--json). If /dev/ublkbN is still open (mounted, or held by a process),\n"
    "the device is removed all the same, its I/O fails, and the kernel keeps\n"
    "its id until the last user closes it: ublkctl says so, and `list` shows\n"
    "the device as removed-pending until then.\n"
    "\n"
    "  --if-exists   a device that does not exist is not an error\n";

constexpr std::string_view kAttachHelp =
    "Usage: ublkctl attach NAME\n"
    "Bring up the device of the drop-in devices.d/NAME.json (unless it is live\n"
    "already), print its block device, then stay until the device stops being\n"
    "live. Under systemd (NOTIFY_SOCKET set) it reports READY=1 once the device\n"
    "is live; this is what ublkd@NAME.service runs.\n"
    "\n"
    "Exit status: 0 when the device was deleted (ublkctl del, or ublkd\n"
    "stopping), 1 when it failed, could not come up, or ublkd went away.\n";

constexpr std::string_view kFeaturesHelp =
    "Usage: ublkctl features\n"
    "Show the ublk feature bits of the running kernel, by name where ublkd\n"
    "knows them.\n";

constexpr std::string_view kReloadHelp =
    "Usage: ublkctl reload\n"
    "Re-read ublkd.json and devices.d, as SIGHUP does: new drop-ins with\n"
    "autostart are brought up; running devices are left alone and reported\n"
    "if their drop-in changed or disappeared.\n";

constexpr std::string_view kUpgradeHelp =
    "Usage: ublkctl upgrade\n"
    "Make ublkd exit without removing its devices, for a new ublkd binary to\n"
    "take them over: each device stays, quiesced (its I/O waits), until the\n"
    "next ublkd recovers it. Under systemd, ublkd.service restarts at once\n"
    "(exit status 75); elsewhere, start ublkd again yourself. Refused while a\n"
    "device is starting or stopping, or if one has recovery off.\n";

constexpr std::string_view kVersionHelp =
    "Usage: ublkctl version\n"
    "Show the version of ublkctl, and the version and API level of ublkd.\n";

constexpr std::string_view kHelpHelp =
    "Usage: ublkctl help [COMMAND]\n"
    "Show the overview, or the help of one command.\n";

struct CommandInfo {
  std::string_view name;
  size_t min_args;  // positional arguments
  size_t max_args;
  std::string_view help;
};

constexpr std::array<CommandInfo, 10> kCommands = {{
    {"add", 0, 1, kAddHelp},
    {"list", 0, 0, kListHelp},
    {"info", 1, 1, kInfoHelp},
    {"del", 1, 1, kDelHelp},
    {"attach", 1, 1, kAttachHelp},
    {"features", 0, 0, kFeaturesHelp},
    {"reload", 0, 0, kReloadHelp},
    {"upgrade", 0, 0, kUpgradeHelp},
    {"version", 0, 0, kVersionHelp},
    {"help", 0, 1, kHelpHelp},
}};

const CommandInfo* find_command(std::string_view name) {
  for (const CommandInfo& c : kCommands) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

struct AddOption {
  std::string_view name;
  bool takes_value;
};

constexpr std::array<AddOption, 12> kAddOptions = {{
    {"backend", true},
    {"size", true},
    {"path", true},
    {"create", false},
    {"buffered", false},
    {"queues", true},
    {"depth", true},
    {"block-size", true},
    {"read-only", false},
    {"no-recovery", false},
    {"spec", true},
    {"persist", false},
}};

const AddOption* find_add_option(std::string_view name) {
  for (const AddOption& o : kAddOptions) {
    if (o.name == name) return &o;
  }
  return nullptr;
}

Error usage(std::string message) {
  return Error(EINVAL, std::move(message));
}

std::string in_quotes(std::string_view s) {
  std::string q = "\"";
  q += s;
  q += '"';
  return q;
}

Result<uint64_t> parse_count(std::string_view option, std::string_view text) {
  uint64_t value = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, value);
  if (ec == std::errc::result_out_of_range) {
    return usage("add: --" + std::string(option) + ": " + in_quotes(text) + " is too large");
  }
  if (text.empty() || ec != std::errc() || p != end) {
    return usage("add: --" + std::string(option) + " needs a whole number, not " + in_quotes(text));
  }
  return value;
}

// The daemon runs with / as its working directory, so a relative path must
// be made absolute here, where the user's working directory is known.
std::string absolute_path(std::string path, const std::string& cwd) {
  if (path.empty() || path.front() == '/' || cwd.empty()) return path;
  while (path.size() >= 2 && path[0] == '.' && path[1] == '/') {
    path.erase(0, path.find_first_not_of('/', 1));
  }
  std::string base = cwd;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  if (path.empty() || path == ".") return base;
  if (base != "/") base += '/';
  return base + path;
}

// ---- formatting helpers -------------------------------------------------

const json& member(const json& object, const std::string& key) {
  static const json kNull;
  if (!object.is_object()) return kNull;
  auto it = object.find(key);
  return it == object.end() ? kNull : *it;
}

std::string dump(const json& value, int indent = -1) {
  return value.dump(indent, ' ', false, json::error_handler_t::replace);
}

std::string pretty(const json& value) {
  return dump(value, 2) + "\n";
}

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

// nlohmann stores a parsed 5 as unsigned but a constructed 5 as signed; both
// are the same JSON.
std::optional<uint64_t> as_u64(const json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    return static_cast<uint64_t>(value.get<int64_t>());
  }
  return std::nullopt;
}

std::string size_text(const json& value) {
  if (auto bytes = as_u64(value)) return format_size(*bytes);
  return scalar_text(value);
}

std::string hex(uint64_t value) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%" PRIx64, value);
  return buf;
}

Error shape_error(std::string_view command, std::string_view what) {
  return Error(EPROTO, "unexpected result from ublkd for " + std::string(command) + ": " +
                           std::string(what));
}

// Left-aligned columns are padded except the last, so no line ends in blanks.
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
// string literal"; the position is given separately, keep the reason.
std::string parse_error_reason(std::string_view what) {
  if (size_t at = what.find("parse error"); at != std::string_view::npos) {
    what.remove_prefix(at);
    if (size_t colon = what.find(": "); colon != std::string_view::npos) {
      what.remove_prefix(colon + 2);
    }
  }
  constexpr std::string_view kNoise = "syntax error while parsing ";
  if (what.substr(0, kNoise.size()) == kNoise) {
    if (size_t dash = what.find(" - "); dash != std::string_view::npos) {
      what.remove_prefix(dash + 3);
    }
  }
  return std::string(what);
}

std::string article(const json& value) {
  if (value.is_array()) return "an array";
  if (value.is_string()) return "a string";
  if (value.is_number()) return "a number";
  if (value.is_boolean()) return "a boolean";
  return "null";
}

Result<std::string> read_all(int fd, const std::string& name) {
  std::string text;
  char chunk[16384];
  for (;;) {
    const ssize_t n = ::read(fd, chunk, sizeof(chunk));
    if (n == 0) return text;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int code = errno;
      return Error(code, "cannot read spec file " + name + ": " + std::strerror(code));
    }
    text.append(chunk, static_cast<size_t>(n));
    if (text.size() > kMaxSpecBytes) {
      return Error(EFBIG, "spec file " + name + " is larger than 1 MiB, the limit of a request");
    }
  }
}

}  // namespace

Result<Invocation> parse_command_line(const std::vector<std::string>& args,
                                      const Environment& env) {
  Invocation inv;
  const CommandInfo* command = nullptr;
  std::optional<std::string> socket;
  bool help = false;
  bool client_version = false;
  std::vector<std::string> positionals;
  std::map<std::string, std::string, std::less<>> values;
  std::set<std::string, std::less<>> flags;
  std::vector<std::string> given;  // add options, in the order given
  bool options_done = false;

  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (!options_done && arg == "--") {
      options_done = true;
      continue;
    }
    if (options_done || arg.size() < 2 || arg[0] != '-') {
      if (command == nullptr) {
        command = find_command(arg);
        if (command == nullptr) {
          return usage("unknown command " + in_quotes(arg) + " (see 'ublkctl --help')");
        }
        inv.command = arg;
      } else {
        positionals.push_back(arg);
      }
      continue;
    }

    const std::string where = command ? std::string(command->name) + ": " : std::string();
    if (arg == "-h" || arg == "--help") {
      help = true;
      continue;
    }
    if (arg == "-V" || arg == "--version") {
      client_version = true;
      continue;
    }
    if (arg.compare(0, 2, "--") != 0) return usage(where + "unknown option " + in_quotes(arg));

    const size_t eq = arg.find('=');
    const std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    std::optional<std::string> inline_value;
    if (eq != std::string::npos) inline_value = arg.substr(eq + 1);

    bool takes_value = false;
    bool is_add_option = false;
    if (name == "json") {
    } else if (name == "socket") {
      takes_value = true;
    } else if (name == "if-exists" && command != nullptr && command->name == "del") {
    } else if (command != nullptr && command->name == "add" && find_add_option(name)) {
      is_add_option = true;
      takes_value = find_add_option(name)->takes_value;
    } else {
      return usage(where + "unknown option --" + name);
    }

    std::string value;
    if (!takes_value) {
      if (inline_value) return usage(where + "--" + name + " takes no value");
    } else if (inline_value) {
      value = *inline_value;
    } else if (i + 1 < args.size() && args[i + 1].compare(0, 2, "--") != 0) {
      // A following "--option" is taken for a forgotten value, not as one;
      // --name=--odd passes such a value deliberately.
      value = args[++i];
    }
    if (takes_value && value.empty()) return usage(where + "--" + name + " needs a value");

    if (name == "json") {
      inv.json = true;
    } else if (name == "if-exists") {
      inv.if_exists = true;
    } else if (name == "socket") {
      if (socket) return usage(where + "--socket given twice");
      socket = value;
    } else if (is_add_option) {
      if (takes_value) {
        if (!values.emplace(name, value).second) return usage("add: --" + name + " given twice");
      } else {
        flags.insert(name);
      }
      given.push_back(name);
    }
  }

  if (socket) {
    inv.socket = *socket;
  } else if (env.socket && !env.socket->empty()) {
    inv.socket = *env.socket;
  } else {
    inv.socket = kDefaultSocket;
  }

  if (client_version) {
    if (command != nullptr) {
      return usage("--version shows the client's version only; 'ublkctl version' asks ublkd too");
    }
    if (!help) {
      inv.kind = Invocation::Kind::kClientVersion;
      return inv;
    }
  }
  if (command == nullptr) {
    if (help) {
      inv.kind = Invocation::Kind::kHelp;
      inv.text = kGlobalHelp;
      return inv;
    }
    return usage("missing command (see 'ublkctl --help')");
  }
  if (command->name == "help") {
    inv.kind = Invocation::Kind::kHelp;
    inv.text = kGlobalHelp;
    if (!positionals.empty()) {
      const CommandInfo* topic = find_command(positionals[0]);
      if (topic == nullptr) return usage("help: unknown command " + in_quotes(positionals[0]));
      inv.text = topic->help;
    }
    if (positionals.size() > 1)
      return usage("help: unexpected argument " + in_quotes(positionals[1]));
    return inv;
  }
  if (help) {
    inv.kind = Invocation::Kind::kHelp;
    inv.text = command->help;
    return inv;
  }

  const std::string where = std::string(command->name) + ": ";
  if (positionals.size() > command->max_args) {
    return usage(where + "unexpected argument " + in_quotes(positionals[command->max_args]));
  }
  if (positionals.size() < command->min_args) return usage(where + "missing the device NAME");

  inv.request = json::object();
  inv.request["op"] = inv.command;
  if (command->name == "info" || command->name == "del") inv.request["name"] = positionals[0];
  if (command->name == "attach") {
    inv.request["op"] = "up";
    inv.request["name"] = positionals[0];
  }

  if (command->name == "add") {
    if (flags.count("persist")) inv.request["persist"] = true;
    if (auto spec_file = values.find("spec"); spec_file != values.end()) {
      if (!positionals.empty()) {
        return usage(
            "add: --spec cannot be combined with a device name (the spec names the device)");
      }
      for (const std::string& o : given) {
        if (o != "spec" && o != "persist") {
          return usage("add: --spec cannot be combined with --" + o +
                       " (the spec describes the device)");
        }
      }
      inv.spec_file = spec_file->second;
    } else {
      if (positionals.empty()) return usage("add: missing the device NAME (or --spec FILE)");
      auto backend_type = values.find("backend");
      if (backend_type == values.end()) return usage("add: missing --backend mem|file|null");

      json spec = json::object();
      spec["name"] = positionals[0];
      json backend = json::object();
      backend["type"] = backend_type->second;
      // The size goes as typed, so that the daemon's message quotes the
      // user's own text.
      if (auto v = values.find("size"); v != values.end()) backend["size"] = v->second;
      if (auto v = values.find("path"); v != values.end()) {
        backend["path"] = absolute_path(v->second, env.cwd);
      }
      if (flags.count("create")) backend["create"] = true;
      if (flags.count("buffered")) backend["direct_io"] = false;
      spec["backend"] = std::move(backend);

      static constexpr std::pair<const char*, const char*> kCounts[] = {
          {"queues", "queues"}, {"depth", "queue_depth"}, {"block-size", "logical_block_size"}};
      for (const auto& [option, field] : kCounts) {
        auto v = values.find(option);
        if (v == values.end()) continue;
        auto n = parse_count(option, v->second);
        if (!n) return n.error();
        spec[field] = *n;
      }
      if (flags.count("read-only")) spec["read_only"] = true;
      if (flags.count("no-recovery")) spec["recovery"] = false;
      inv.request["spec"] = std::move(spec);
    }
  }

  try {
    (void)inv.request.dump();
  } catch (const json::exception&) {
    return usage(where + "arguments must be valid UTF-8 (JSON cannot carry other bytes)");
  }
  return inv;
}

std::chrono::milliseconds response_timeout(std::string_view command) {
  if (command == "add" || command == "del" || command == "reload" || command == "attach")
    return kSlowResponseTimeout;
  return kResponseTimeout;
}

Result<json> parse_spec_text(std::string_view text, std::string_view origin) {
  const std::string name(origin);
  if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    return Error(EINVAL, name + ": the spec file is empty");
  }
  json spec;
  try {
    spec = json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    // e.byte is the 1-based position of the last character read, where the
    // parser noticed the mistake. Columns count characters, as editors do.
    const size_t offset = std::min(e.byte > 0 ? e.byte - 1 : 0, text.size());
    size_t line = 1;
    size_t column = 1;
    for (size_t i = 0; i < offset; ++i) {
      const auto c = static_cast<unsigned char>(text[i]);
      if (c == '\n') {
        ++line;
        column = 1;
      } else if ((c & 0xC0) != 0x80) {
        ++column;
      }
    }
    return Error(EINVAL, name + ":" + std::to_string(line) + ":" + std::to_string(column) +
                             ": invalid JSON: " + parse_error_reason(e.what()));
  } catch (const json::exception& e) {
    return Error(EINVAL, name + ": invalid JSON: " + e.what());
  }
  if (!spec.is_object()) {
    return Error(EINVAL, name + ": a device spec must be a JSON object, not " + article(spec));
  }
  return spec;
}

Result<json> read_spec_file(const std::string& path) {
  if (path == "-") {
    auto text = read_all(STDIN_FILENO, "(standard input)");
    if (!text) return text.error();
    return parse_spec_text(*text, "(standard input)");
  }
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    const int code = errno;
    return Error(code, "cannot read spec file " + path + ": " + std::strerror(code));
  }
  auto text = read_all(fd.get(), path);
  if (!text) return text.error();
  return parse_spec_text(*text, path);
}

Result<json> interpret_response(std::string_view line) {
  json response;
  try {
    response = json::parse(line.begin(), line.end());
  } catch (const json::exception& e) {
    return Error(EPROTO, "invalid response from ublkd: not JSON: " + parse_error_reason(e.what()));
  }
  if (!response.is_object()) {
    return Error(EPROTO, "invalid response from ublkd: not a JSON object");
  }
  const json& ok = member(response, "ok");
  if (!ok.is_boolean()) {
    return Error(EPROTO, "invalid response from ublkd: no boolean \"ok\"");
  }
  if (ok.get<bool>()) return member(response, "result");

  const json& error = member(response, "error");
  const json& code = member(error, "code");
  const json& message = member(error, "message");
  std::string text = message.is_string() && !message.get<std::string>().empty()
                         ? message.get<std::string>()
                         : std::string("ublkd reported an error without a message");
  while (!text.empty() && text.back() == '\n') text.pop_back();
  const std::string tag =
      " [" + (code.is_string() ? code.get<std::string>() : std::string("?")) + "]";
  const size_t nl = text.find('\n');
  std::string out = text.substr(0, nl) + tag;
  for (size_t start = nl; start != std::string::npos;) {
    const size_t next = text.find('\n', start + 1);
    out += "\n  " + text.substr(start + 1, next == std::string::npos ? next : next - start - 1);
    start = next;
  }
  return Error(EREMOTEIO, std::move(out));
}

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

namespace {

// The error code of a response line, or "" for a success or an unreadable
// line (which interpret_response() then reports).
std::string error_code_of(std::string_view line) {
  try {
    const json r = json::parse(line.begin(), line.end());
    const json& code = member(member(r, "error"), "code");
    return code.is_string() ? code.get<std::string>() : std::string();
  } catch (const json::exception&) {
    return {};
  }
}

// The rest of `attach` once the device is live: report it, then keep asking
// the daemon (on the same connection) to answer when the device leaves live.
int attach(const Invocation& inv, int fd, const json& device, std::ostream& out,
           std::ostream& err, const RunOptions& options) {
  const std::string name = inv.request["name"].get<std::string>();
  const json& dev = member(device, "block_device");
  const std::string block = dev.is_string() ? dev.get<std::string>() : std::string("?");
  out << (inv.json ? pretty(device) : block + "\n") << std::flush;
  if (options.notify) options.notify("READY=1\nSTATUS=device " + name + " live at " + block);

  json watch = {{"op", "watch"}, {"name", name}, {"timeout_ms", options.watch_period.count()}};
  // The daemon answers within the period; the margin covers a busy loop.
  const auto deadline = options.watch_period + std::chrono::milliseconds(10000);
  for (;;) {
    auto line = exchange_on(fd, dump(watch), deadline);
    if (!line) {
      err << "ublkctl: lost ublkd while attached to " << name << ": " << line.error().message()
          << '\n';
      return 1;
    }
    auto result = interpret_response(*line);
    if (!result) {
      err << "ublkctl: " << result.error().message() << '\n';
      return 1;
    }
    if (member(*result, "live").is_boolean() && member(*result, "live").get<bool>()) continue;
    const json& state = member(*result, "state");
    const std::string st = state.is_string() ? state.get<std::string>() : std::string("?");
    if (options.notify) options.notify("STOPPING=1\nSTATUS=device " + name + " is " + st);
    // Deleted (by `del`, or by ublkd stopping) is the normal end; anything
    // else means the device broke.
    if (st == "absent" || st == "removed" || st == "removed-pending" || st == "stopping") {
      err << "ublkctl: device " << name << " is " << (st == "absent" ? "gone" : st) << '\n';
      return 0;
    }
    const json& why = member(*result, "error");
    err << "ublkctl: device " << name << " is " << st
        << (why.is_string() ? ": " + why.get<std::string>() : std::string()) << '\n';
    return 1;
  }
}

}  // namespace

int run(const std::vector<std::string>& args, const Environment& env, std::ostream& out,
        std::ostream& err, const RunOptions& options) {
  auto parsed = parse_command_line(args, env);
  if (!parsed) {
    err << "ublkctl: " << parsed.error().message() << '\n';
    return 1;
  }
  Invocation& inv = *parsed;
  if (inv.kind == Invocation::Kind::kHelp) {
    out << inv.text;
    return 0;
  }
  if (inv.kind == Invocation::Kind::kClientVersion) {
    out << "ublkctl " << UBLKD_VERSION << '\n';
    return 0;
  }

  auto fail = [&](const std::string& message) {
    // Whoever asks for the versions is often chasing a connection problem;
    // the client's own version is known regardless.
    if (inv.command == "version" && !inv.json) out << "ublkctl " << UBLKD_VERSION << '\n';
    err << "ublkctl: " << message << '\n';
    return 1;
  };

  if (!inv.spec_file.empty()) {
    auto spec = read_spec_file(inv.spec_file);
    if (!spec) return fail(spec.error().message());
    inv.request["spec"] = std::move(*spec);
  }

  auto fd = connect_to_daemon(inv.socket, options.connect_timeout);
  if (!fd) return fail(fd.error().message());
  const auto timeout = options.response_timeout.value_or(response_timeout(inv.command));
  auto line = exchange_on(fd->get(), dump(inv.request), timeout);
  if (!line) {
    std::string message = line.error().message();
    if (line.error().code() == ETIMEDOUT && response_timeout(inv.command) == kSlowResponseTimeout) {
      // The protocol has no cancellation: giving up on the answer leaves the
      // operation running in the daemon.
      message += "; the " + inv.command + " may still complete (see 'ublkctl list')";
    }
    return fail(message);
  }
  if (inv.if_exists && error_code_of(*line) == "not-found") return 0;
  auto result = interpret_response(*line);
  if (!result) return fail(result.error().message());
  if (inv.command == "attach") return attach(inv, fd->get(), *result, out, err, options);
  auto text = format_result(inv.command, *result, inv.json);
  if (!text) return fail(text.error().message());
  out << *text;
  return 0;
}

}  // namespace ublkd::ctl
