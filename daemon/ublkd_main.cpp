// ublkd: serves ublk block devices described by JSON drop-ins and managed
// through an admin socket. Foreground, never forks; SIGTERM/SIGINT stop and
// delete every device (cutting short starts under way), then exit 0, or 1
// if a device could not be stopped and deleted cleanly.
#include <getopt.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <spdlog/spdlog.h>

#include "config/config_dir.h"
#include "daemon.h"
#include "log.h"
#include "ublkd_version.h"

namespace {

using namespace ublkd;

constexpr const char* kDefaultConfigDir = "/etc/ublkd";
constexpr const char* kDefaultStateDir = "/run/ublkd";

void usage(FILE* out) {
  std::fprintf(out,
               "Usage: ublkd [OPTIONS]\n"
               "Serve ublk block devices (/dev/ublkbN) described by DIR/devices.d/*.json and\n"
               "managed at run time with ublkctl.\n"
               "\n"
               "  -c, --config-dir DIR     configuration directory (default %s)\n"
               "      --check-config       validate the configuration, print every problem,\n"
               "                           exit non-zero if there is one; touches no device\n"
               "  -s, --socket PATH        admin socket (default: ublkd.json's socket, else\n"
               "                           STATE_DIR/ublkd.sock)\n"
               "      --state-dir DIR      runtime state directory (default %s); one per\n"
               "                           ublkd\n"
               "  -l, --log-level LEVEL    trace|debug|info|warn|error (default: ublkd.json's\n"
               "                           log_level, else info)\n"
               "      --log-target TARGET  auto|journal|console (default auto): journal sends\n"
               "                           structured entries (DEVICE=NAME for a device's\n"
               "                           messages) to systemd-journald; console writes lines\n"
               "                           to stderr; auto picks journal when stderr is\n"
               "                           connected to the journal, else console\n"
               "      --start-timeout SECS how long a device may take to go live (default:\n"
               "                           ublkd.json's start_timeout, else 10)\n"
               "  -h, --help               show this help\n"
               "  -V, --version            show the version\n"
               "\n"
               "Runs in the foreground. SIGTERM or SIGINT stops and deletes every device and\n"
               "exits 0, or 1 if a device could not be stopped and deleted cleanly;\n"
               "SIGHUP re-reads the drop-ins and brings up new ones. Under systemd it\n"
               "reports readiness and status (Type=notify), pings the watchdog (WatchdogSec=)\n"
               "and takes its admin socket from ublkd.socket when that passes one.\n",
               kDefaultConfigDir, kDefaultStateDir);
}

spdlog::level::level_enum to_spdlog(LogLevel l) {
  switch (l) {
    case LogLevel::kTrace: return spdlog::level::trace;
    case LogLevel::kDebug: return spdlog::level::debug;
    case LogLevel::kInfo: return spdlog::level::info;
    case LogLevel::kWarn: return spdlog::level::warn;
    case LogLevel::kError: return spdlog::level::err;
  }
  return spdlog::level::info;
}

struct Options {
  DaemonOptions daemon;
  bool check_only = false;
  bool socket_given = false;
  std::optional<LogLevel> log_level;
  LogTarget log_target = LogTarget::kAuto;
};

// Returns the exit code to leave with, or -1 to run.
int parse_args(int argc, char** argv, Options& o) {
  enum { kCheckConfig = 256, kStartTimeout, kStateDir, kLogTarget };
  static const option longopts[] = {
      {"config-dir", required_argument, nullptr, 'c'},
      {"check-config", no_argument, nullptr, kCheckConfig},
      {"socket", required_argument, nullptr, 's'},
      {"state-dir", required_argument, nullptr, kStateDir},
      {"log-level", required_argument, nullptr, 'l'},
      {"log-target", required_argument, nullptr, kLogTarget},
      {"start-timeout", required_argument, nullptr, kStartTimeout},
      {"help", no_argument, nullptr, 'h'},
      {"version", no_argument, nullptr, 'V'},
      {nullptr, 0, nullptr, 0},
  };
  o.daemon.config_dir = kDefaultConfigDir;
  o.daemon.state_dir = kDefaultStateDir;
  int c;
  while ((c = getopt_long(argc, argv, "c:s:l:hV", longopts, nullptr)) != -1) {
    switch (c) {
      case 'c': o.daemon.config_dir = optarg; break;
      case kCheckConfig: o.check_only = true; break;
      case 's': o.daemon.socket = optarg; break;
      case kStateDir: o.daemon.state_dir = optarg; break;
      case 'l':
        o.log_level = parse_log_level(optarg);
        if (!o.log_level) {
          std::fprintf(stderr,
                       "ublkd: --log-level: '%s' is not one of trace, debug, info, warn, error\n",
                       optarg);
          return 2;
        }
        break;
      case kLogTarget: {
        auto t = parse_log_target(optarg);
        if (!t) {
          std::fprintf(stderr, "ublkd: --log-target: '%s' is not one of auto, journal, console\n",
                       optarg);
          return 2;
        }
        o.log_target = *t;
        break;
      }
      case kStartTimeout: {
        char* end = nullptr;
        errno = 0;
        const double secs = std::strtod(optarg, &end);
        if (errno != 0 || end == optarg || *end != '\0' || !(secs > 0) || secs > 300) {
          std::fprintf(stderr,
                       "ublkd: --start-timeout: '%s' is not a number of seconds in (0, 300]\n",
                       optarg);
          return 2;
        }
        o.daemon.start_timeout = std::chrono::milliseconds(static_cast<int64_t>(secs * 1000));
        break;
      }
      case 'h': usage(stdout); return 0;
      case 'V': std::printf("ublkd %s\n", UBLKD_VERSION); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (optind < argc) {
    std::fprintf(stderr, "ublkd: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  Options opts;
  if (int rc = parse_args(argc, argv, opts); rc >= 0) return rc;

  // --check-config answers the person at the terminal, wherever stderr goes.
  setup_logging(opts.check_only ? LogTarget::kConsole : opts.log_target,
                to_spdlog(opts.log_level.value_or(LogLevel::kInfo)));

  auto loaded = load_config_dir(opts.daemon.config_dir);
  if (!loaded) {
    spdlog::error("{}", loaded.error().to_string());
    return 1;
  }
  const LoadedConfig& cfg = *loaded;
  spdlog::set_level(to_spdlog(opts.log_level.value_or(cfg.daemon.log_level)));

  if (opts.check_only) {
    for (const ConfigProblem& p : cfg.problems) std::fprintf(stderr, "%s\n", p.to_string().c_str());
    std::printf("%zu device%s valid, %zu problem%s\n", cfg.devices.size(),
                cfg.devices.size() == 1 ? "" : "s", cfg.problems.size(),
                cfg.problems.size() == 1 ? "" : "s");
    return cfg.problems.empty() ? 0 : 1;
  }
  // Without an explicit socket, the state dir decides where it lives unless
  // ublkd.json names one.
  if (!opts.daemon.socket && cfg.daemon.socket == std::string(kDefaultSocketPath))
    opts.daemon.socket = (opts.daemon.state_dir / "ublkd.sock").string();
  return run_daemon(opts.daemon, cfg);
}
