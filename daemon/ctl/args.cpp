// ublkctl's command line: the arguments become an Invocation, most often
// one admin API request.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <vector>

#include "backends/backend_type.h"
#include "common/wire.h"
#include "ctl/commands.h"
#include "ctl/internal.h"

namespace ublkd::ctl {

namespace {

using nlohmann::json;

// The command line taken apart, before it is checked as a whole.
struct Scan {
  const CommandInfo* command = nullptr;
  std::string command_name;
  std::optional<std::string> socket;
  bool help = false;
  bool client_version = false;
  bool json = false;
  bool if_exists = false;
  bool force = false;
  // stats: --watch, --count, --format as typed.
  std::optional<std::string> watch;
  std::optional<std::string> count;
  std::optional<std::string> format;
  std::vector<std::string> positionals;
  // add: the options with a value, the ones without, and every one in the
  // order given.
  std::map<std::string, std::string, std::less<>> values;
  std::set<std::string, std::less<>> flags;
  std::vector<std::string> given;
};

// Whether `name` is an option of `add`, and whether it takes a value.
std::optional<bool> add_option_takes_value(std::string_view name) {
  for (const AddOption& o : device_add_options()) {
    if (o.name == name) return o.takes_value;
  }
  for (const BackendType* type : backend_types()) {
    for (const BackendFlag& f : type->flags) {
      if (f.name == name)
        return f.sets == BackendFlag::Sets::kValue || f.sets == BackendFlag::Sets::kPath;
    }
  }
  return std::nullopt;
}

Result<uint64_t> parse_count(std::string_view command, std::string_view option,
                             std::string_view text) {
  uint64_t value = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, value);
  const std::string where = std::string(command) + ": --" + std::string(option);
  if (ec == std::errc::result_out_of_range) return usage(where + ": " + in_quotes(text) + " is too large");
  if (text.empty() || ec != std::errc() || p != end)
    return usage(where + " needs a whole number, not " + in_quotes(text));
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

// One argument that is not an option: the command, or a positional.
Result<void> scan_word(const std::string& arg, Scan& s) {
  if (s.command != nullptr) {
    s.positionals.push_back(arg);
    return {};
  }
  s.command = find_command(arg);
  if (s.command == nullptr)
    return usage("unknown command " + in_quotes(arg) + " (see 'ublkctl --help')");
  s.command_name = arg;
  return {};
}

// Records one option `--name` (with `value`, if it takes one).
Result<void> record_option(const std::string& name, std::string value, bool is_add_option,
                           bool takes_value, Scan& s) {
  const std::string where = s.command ? std::string(s.command->name) + ": " : std::string();
  if (name == "json") {
    s.json = true;
  } else if (name == "if-exists") {
    s.if_exists = true;
  } else if (name == "force") {
    s.force = true;
  } else if (name == "watch" || name == "count" || name == "format") {
    auto& slot = name == "watch" ? s.watch : name == "count" ? s.count : s.format;
    if (slot) return usage(where + "--" + name + " given twice");
    slot = std::move(value);
  } else if (name == "socket") {
    if (s.socket) return usage(where + "--socket given twice");
    s.socket = std::move(value);
  } else if (is_add_option) {
    if (takes_value) {
      if (!s.values.emplace(name, std::move(value)).second)
        return usage("add: --" + name + " given twice");
    } else {
      s.flags.insert(name);
    }
    s.given.push_back(name);
  }
  return {};
}

// The option at args[i], which starts with '-'; moves i past its value.
Result<void> scan_option(const std::vector<std::string>& args, size_t& i, Scan& s) {
  const std::string& arg = args[i];
  const std::string where = s.command ? std::string(s.command->name) + ": " : std::string();
  if (arg == "-h" || arg == "--help") {
    s.help = true;
    return {};
  }
  if (arg == "-V" || arg == "--version") {
    s.client_version = true;
    return {};
  }
  if (arg.compare(0, 2, "--") != 0) return usage(where + "unknown option " + in_quotes(arg));

  const size_t eq = arg.find('=');
  const std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
  std::optional<std::string> inline_value;
  if (eq != std::string::npos) inline_value = arg.substr(eq + 1);

  bool takes_value = false;
  bool is_add_option = false;
  const std::string_view command = s.command ? s.command->name : std::string_view();
  if (name == "json") {
  } else if (name == "socket") {
    takes_value = true;
  } else if (name == "if-exists" && command == "del") {
  } else if (name == "force" && (command == "resize" || command == "del")) {
  } else if ((name == "watch" || name == "count" || name == "format") && command == "stats") {
    takes_value = true;
  } else if (auto add = command == "add" ? add_option_takes_value(name) : std::nullopt) {
    is_add_option = true;
    takes_value = *add;
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
  return record_option(name, std::move(value), is_add_option, takes_value, s);
}

Result<Scan> scan(const std::vector<std::string>& args) {
  Scan s;
  bool options_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (!options_done && arg == "--") {
      options_done = true;
      continue;
    }
    const bool word = options_done || arg.size() < 2 || arg[0] != '-';
    if (auto r = word ? scan_word(arg, s) : scan_option(args, i, s); !r) return r.error();
  }
  return s;
}

// --help, --version and `help` answer without the daemon; nullopt for
// everything else.
std::optional<Result<Invocation>> help_or_version(const Scan& s, Invocation& inv) {
  if (s.client_version) {
    if (s.command != nullptr) {
      return usage("--version shows the client's version only; 'ublkctl version' asks ublkd too");
    }
    if (!s.help) {
      inv.kind = Invocation::Kind::kClientVersion;
      return inv;
    }
  }
  if (s.command == nullptr) {
    if (!s.help) return usage("missing command (see 'ublkctl --help')");
    inv.kind = Invocation::Kind::kHelp;
    inv.text = global_help();
    return inv;
  }
  if (s.command->name == "help") {
    inv.kind = Invocation::Kind::kHelp;
    inv.text = global_help();
    if (!s.positionals.empty()) {
      const CommandInfo* topic = find_command(s.positionals[0]);
      if (topic == nullptr) return usage("help: unknown command " + in_quotes(s.positionals[0]));
      inv.text = topic->help;
    }
    if (s.positionals.size() > 1)
      return usage("help: unexpected argument " + in_quotes(s.positionals[1]));
    return inv;
  }
  if (s.help) {
    inv.kind = Invocation::Kind::kHelp;
    inv.text = s.command->help;
    return inv;
  }
  return std::nullopt;
}

// The "backend" object of `add NAME --backend TYPE ...`: each option of a
// backend type sets its key, whatever the type (the daemon names a key the
// type does not have).
json backend_object(const std::string& type, const Scan& s, const Environment& env) {
  json backend = json::object();
  backend["type"] = type;
  for (const BackendType* t : backend_types()) {
    for (const BackendFlag& f : t->flags) {
      const std::string key(f.key);
      if (auto v = s.values.find(f.name); v != s.values.end()) {
        backend[key] =
            f.sets == BackendFlag::Sets::kPath ? absolute_path(v->second, env.cwd) : v->second;
      } else if (s.flags.count(f.name)) {
        backend[key] = f.sets == BackendFlag::Sets::kTrue;
      }
    }
  }
  return backend;
}

Result<json> spec_object(const Scan& s, const Environment& env) {
  if (s.positionals.empty()) return usage("add: missing the device NAME (or --spec FILE)");
  auto backend_type = s.values.find("backend");
  if (backend_type == s.values.end())
    return usage("add: missing --backend " + backend_type_names("|"));

  json spec = json::object();
  spec["name"] = s.positionals[0];
  // The size goes as typed, so that the daemon's message quotes the user's
  // own text.
  spec["backend"] = backend_object(backend_type->second, s, env);
  static constexpr std::pair<const char*, const char*> kCounts[] = {
      {"queues", "queues"}, {"depth", "queue_depth"}, {"block-size", "logical_block_size"}};
  for (const auto& [option, field] : kCounts) {
    auto v = s.values.find(option);
    if (v == s.values.end()) continue;
    auto n = parse_count("add", option, v->second);
    if (!n) return n.error();
    spec[field] = *n;
  }
  if (s.flags.count("read-only")) spec["read_only"] = true;
  if (s.flags.count("no-recovery")) spec["recovery"] = false;
  if (s.flags.count("no-partition-scan")) spec["partition_scan"] = false;
  return spec;
}

// add: the spec comes from a file (--spec, read later) or the options.
Result<void> add_request(const Scan& s, const Environment& env, Invocation& inv) {
  if (s.flags.count("persist")) inv.request["persist"] = true;
  auto spec_file = s.values.find("spec");
  if (spec_file == s.values.end()) {
    auto spec = spec_object(s, env);
    if (!spec) return spec.error();
    inv.request["spec"] = std::move(spec).value();
    return {};
  }
  if (!s.positionals.empty()) {
    return usage("add: --spec cannot be combined with a device name (the spec names the device)");
  }
  for (const std::string& o : s.given) {
    if (o != "spec" && o != "persist") {
      return usage("add: --spec cannot be combined with --" + o +
                   " (the spec describes the device)");
    }
  }
  inv.spec_file = spec_file->second;
  return {};
}

// stats [NAME] [--watch SECS [--count N]] [--format prometheus].
Result<void> stats_request(const Scan& s, Invocation& inv) {
  if (!s.positionals.empty()) inv.request["name"] = s.positionals[0];
  if (s.format) {
    if (*s.format != "prometheus" && *s.format != "text") {
      return usage("stats: --format takes text or prometheus, not " + in_quotes(*s.format));
    }
    inv.prometheus = *s.format == "prometheus";
    if (inv.prometheus && s.json) return usage("stats: --format prometheus and --json exclude each other");
  }
  if (s.watch) {
    char* end = nullptr;
    const double secs = std::strtod(s.watch->c_str(), &end);
    if (s.watch->empty() || *end != '\0' || !(secs >= 0.1 && secs <= 86400)) {
      return usage("stats: --watch takes seconds from 0.1 to 86400, not " + in_quotes(*s.watch));
    }
    if (s.json || inv.prometheus) {
      return usage("stats: --watch prints rates as a table; it takes neither --json nor "
                   "--format prometheus");
    }
    inv.watch = std::chrono::milliseconds(std::llround(secs * 1000));
  }
  if (s.count) {
    if (!s.watch) return usage("stats: --count goes with --watch");
    auto n = parse_count("stats", "count", *s.count);
    if (!n) return n.error();
    if (*n == 0) return usage("stats: --count must be at least 1");
    inv.count = *n;
  }
  return {};
}

Result<void> build_request(const Scan& s, const Environment& env, Invocation& inv) {
  const std::string_view command = s.command->name;
  const std::string where = std::string(command) + ": ";
  if (s.positionals.size() > s.command->max_args)
    return usage(where + "unexpected argument " + in_quotes(s.positionals[s.command->max_args]));
  if (s.positionals.size() < s.command->min_args) {
    return usage(where + (s.positionals.empty() ? "missing the device NAME" : "missing the SIZE"));
  }

  inv.request = json::object();
  inv.request["op"] = inv.command;
  if (command == "info" || command == "del") inv.request["name"] = s.positionals[0];
  if (command == "del" && s.force) inv.request["force"] = true;
  if (command == "stats") {
    if (auto r = stats_request(s, inv); !r) return r;
  }
  if (command == "resize") {
    inv.request["name"] = s.positionals[0];
    // As typed: the daemon parses it, and its message quotes it.
    inv.request["size"] = s.positionals[1];
    if (s.force) inv.request["force"] = true;
  }
  if (command == "attach") {
    inv.request["op"] = "up";
    inv.request["name"] = s.positionals[0];
  }
  if (command == "add") {
    if (auto r = add_request(s, env, inv); !r) return r;
  }
  try {
    (void)inv.request.dump();
  } catch (const json::exception&) {
    return usage(where + "arguments must be valid UTF-8 (JSON cannot carry other bytes)");
  }
  return {};
}

}  // namespace

Result<Invocation> parse_command_line(const std::vector<std::string>& args,
                                      const Environment& env) {
  auto s = scan(args);
  if (!s) return s.error();
  Invocation inv;
  inv.command = s->command_name;
  inv.json = s->json;
  inv.if_exists = s->if_exists;
  if (s->socket) {
    inv.socket = *s->socket;
  } else if (env.socket && !env.socket->empty()) {
    inv.socket = *env.socket;
  } else {
    inv.socket = kDefaultSocketPath;
  }
  if (auto early = help_or_version(*s, inv)) return std::move(*early);
  if (auto r = build_request(*s, env, inv); !r) return r.error();
  return inv;
}

}  // namespace ublkd::ctl
