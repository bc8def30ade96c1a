// ublkctl's commands: the command line becomes one admin API request
// (docs/admin-api.md) and the response becomes text for people or JSON for
// scripts. Everything but run() is a pure function of its arguments, so the
// whole surface of the tool can be tested without a daemon.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"

namespace ublkd::ctl {

// Bringing a device up or down (and a reload, which may start several) waits
// for the kernel and the backend; everything else answers from memory.
inline constexpr std::chrono::milliseconds kSlowResponseTimeout{60000};
inline constexpr std::chrono::milliseconds kResponseTimeout{10000};

// What the command line is interpreted against, passed in rather than read so
// that parsing stays pure.
struct Environment {
  std::optional<std::string> socket;  // $UBLKD_SOCKET
  std::string cwd;                    // relative --path values are resolved against it
};

struct Invocation {
  enum class Kind {
    kRequest,        // send `request` to the daemon
    kHelp,           // print `text` to stdout, exit 0
    kClientVersion,  // --version: the client's version only, no daemon needed
  };
  Kind kind = Kind::kRequest;
  std::string text;
  std::string command;  // "add", "list", ...
  std::string socket;
  bool json = false;
  nlohmann::json request;
  // add --spec: the file whose object becomes request["spec"] (read_spec_file).
  std::string spec_file;
  // del --if-exists: "not-found" counts as success.
  bool if_exists = false;
  // stats: --format prometheus; --watch SECS (rates every SECS), --count N
  // (that many reports, then exit; default: until interrupted).
  bool prometheus = false;
  std::optional<std::chrono::milliseconds> watch;
  std::optional<uint64_t> count;
};

// argv without argv[0]. Errors are usage errors (exit 1); their message is
// the line to print after "ublkctl: ".
Result<Invocation> parse_command_line(const std::vector<std::string>& args, const Environment& env);

std::chrono::milliseconds response_timeout(std::string_view command);

// The text of a spec file as a spec object. `origin` names the file in
// messages: "disk0.json:3:14: invalid JSON: ...".
Result<nlohmann::json> parse_spec_text(std::string_view text, std::string_view origin);
// Reads and parses a spec file; "-" reads standard input.
Result<nlohmann::json> read_spec_file(const std::string& path);

// A response line, checked against the protocol: the result of a success, or
// the server's error as "<message> [<code>]". A multi-line message (invalid
// specs list one problem per line) keeps its later lines, indented.
Result<nlohmann::json> interpret_response(std::string_view line);

// What `ublkctl [--json] COMMAND` prints for a successful result; every line
// ends in '\n' and an empty string means print nothing. Fails only when the
// result lacks the shape the protocol promises.
Result<std::string> format_result(std::string_view command, const nlohmann::json& result,
                                  bool json);

// ublkctl stats (a `stats` result): the totals as a table; the rates
// between two results `seconds` apart; Prometheus's text exposition format.
Result<std::string> format_stats(const nlohmann::json& result);
Result<std::string> format_stats_rates(const nlohmann::json& before, const nlohmann::json& after,
                                       double seconds);
Result<std::string> format_prometheus(const nlohmann::json& result);

struct RunOptions {
  // Tests shorten the per-command response timeout.
  std::optional<std::chrono::milliseconds> response_timeout;
  std::chrono::milliseconds connect_timeout{5000};
  // attach: how long each watch request asks the daemon to wait.
  std::chrono::milliseconds watch_period{30000};
  // attach: tells the service manager about the device (sd_notify text,
  // e.g. "READY=1"); empty outside systemd.
  std::function<void(const std::string&)> notify;
};

// The whole tool: parse, talk to the daemon, print. Returns the exit status:
// 0 success, 1 error, usage errors included (one line on `err`).
int run(const std::vector<std::string>& args, const Environment& env, std::ostream& out,
        std::ostream& err, const RunOptions& options = {});

}  // namespace ublkd::ctl
