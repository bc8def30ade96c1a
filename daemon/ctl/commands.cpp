#include "ctl/commands.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>
#include <utility>

#include "base/unique_fd.h"
#include "common/json_text.h"
#include "common/wire.h"
#include "ctl/client.h"
#include "ctl/internal.h"
#include "ublkd_version.h"

namespace ublkd::ctl {

namespace {

using nlohmann::json;

// The admin API refuses request lines over 1 MiB, so a larger spec could
// never be sent.
constexpr size_t kMaxSpecBytes = 1 << 20;

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

std::chrono::milliseconds response_timeout(std::string_view command) {
  if (command == "add" || command == "del" || command == "reload" || command == "attach" ||
      command == "resize")
    return kSlowResponseTimeout;
  return kResponseTimeout;
}

Result<json> parse_spec_text(std::string_view text, std::string_view origin) {
  const std::string name(origin);
  if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    return Error(EINVAL, name + ": the spec file is empty");
  }
  auto parsed = json_text::parse(text, json_text::Columns::kCharacters);
  if (!parsed) {
    const json_text::ParseFailure& f = parsed.error();
    if (!f.at) return Error(EINVAL, name + ": invalid JSON: " + f.reason);
    return Error(EINVAL, name + ":" + std::to_string(f.at->line) + ":" +
                             std::to_string(f.at->column) + ": invalid JSON: " + f.reason);
  }
  json spec = std::move(parsed).value();
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
    return Error(EPROTO, "invalid response from ublkd: not JSON: " +
                             json_text::parse_error_reason(e.what()));
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
int attach(const Invocation& inv, int fd, const json& device, std::ostream& out, std::ostream& err,
           const RunOptions& options) {
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

// stats --format prometheus, and stats --watch: one request per report on
// the same connection.
int stats(const Invocation& inv, int fd, std::chrono::milliseconds timeout, std::ostream& out,
          std::ostream& err) {
  auto sample = [&]() -> Result<json> {
    auto line = exchange_on(fd, dump(inv.request), timeout);
    if (!line) return line.error();
    return interpret_response(*line);
  };
  auto fail = [&](const Error& e) {
    err << "ublkctl: " << e.message() << '\n';
    return 1;
  };
  auto before = sample();
  if (!before) return fail(before.error());
  if (inv.prometheus) {
    auto text = format_prometheus(*before);
    if (!text) return fail(text.error());
    out << *text;
    return 0;
  }
  auto taken = std::chrono::steady_clock::now();
  for (uint64_t n = 0; !inv.count || n < *inv.count; ++n) {
    std::this_thread::sleep_for(*inv.watch);
    auto after = sample();
    if (!after) return fail(after.error());
    const auto now = std::chrono::steady_clock::now();
    auto text = format_stats_rates(*before, *after, std::chrono::duration<double>(now - taken).count());
    if (!text) return fail(text.error());
    out << (n > 0 ? "\n" : "") << *text << std::flush;
    before = std::move(after);
    taken = now;
  }
  return 0;
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
  if (inv.prometheus || inv.watch) return stats(inv, fd->get(), timeout, out, err);
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
  if (inv.if_exists && error_code_of(*line) == admin::code::kNotFound) return 0;
  auto result = interpret_response(*line);
  if (!result) return fail(result.error().message());
  if (inv.command == "attach") return attach(inv, fd->get(), *result, out, err, options);
  auto text = format_result(inv.command, *result, inv.json);
  if (!text) return fail(text.error().message());
  out << *text;
  return 0;
}

}  // namespace ublkd::ctl
