// ublkd: serves ublk block devices described by JSON drop-ins. Foreground,
// never forks; SIGTERM/SIGINT stop and delete every device, then exit 0.
#include <getopt.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "config/config_dir.h"
#include "manager.h"
#include "ublkd_version.h"

namespace {

using namespace ublkd;

constexpr const char* kDefaultConfigDir = "/etc/ublkd";

void usage(FILE* out) {
  std::fprintf(out,
               "Usage: ublkd [OPTIONS]\n"
               "Serve ublk block devices (/dev/ublkbN) described by DIR/devices.d/*.json.\n"
               "\n"
               "  -c, --config-dir DIR     configuration directory (default %s)\n"
               "      --check-config       validate the configuration, print every problem,\n"
               "                           exit non-zero if there is one; touches no device\n"
               "  -l, --log-level LEVEL    trace|debug|info|warn|error (default: ublkd.json's\n"
               "                           log_level, else info)\n"
               "      --start-timeout SECS how long a device may take to go live (default:\n"
               "                           ublkd.json's start_timeout, else 10)\n"
               "  -h, --help               show this help\n"
               "  -V, --version            show the version\n"
               "\n"
               "Runs in the foreground. SIGTERM or SIGINT stops and deletes every device.\n",
               kDefaultConfigDir);
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
  std::string config_dir = kDefaultConfigDir;
  bool check_only = false;
  std::optional<LogLevel> log_level;
  std::optional<std::chrono::milliseconds> start_timeout;
};

// Returns the exit code to leave with, or -1 to run.
int parse_args(int argc, char** argv, Options& o) {
  enum { kCheckConfig = 256, kStartTimeout };
  static const option longopts[] = {
      {"config-dir", required_argument, nullptr, 'c'},
      {"check-config", no_argument, nullptr, kCheckConfig},
      {"log-level", required_argument, nullptr, 'l'},
      {"start-timeout", required_argument, nullptr, kStartTimeout},
      {"help", no_argument, nullptr, 'h'},
      {"version", no_argument, nullptr, 'V'},
      {nullptr, 0, nullptr, 0},
  };
  int c;
  while ((c = getopt_long(argc, argv, "c:l:hV", longopts, nullptr)) != -1) {
    switch (c) {
      case 'c': o.config_dir = optarg; break;
      case kCheckConfig: o.check_only = true; break;
      case 'l':
        o.log_level = parse_log_level(optarg);
        if (!o.log_level) {
          std::fprintf(stderr, "ublkd: --log-level: '%s' is not one of trace, debug, info, warn, error\n",
                       optarg);
          return 2;
        }
        break;
      case kStartTimeout: {
        char* end = nullptr;
        errno = 0;
        const double secs = std::strtod(optarg, &end);
        if (errno != 0 || end == optarg || *end != '\0' || !(secs > 0) || secs > 300) {
          std::fprintf(stderr, "ublkd: --start-timeout: '%s' is not a number of seconds in (0, 300]\n",
                       optarg);
          return 2;
        }
        o.start_timeout = std::chrono::milliseconds(static_cast<int64_t>(secs * 1000));
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

int run(const Options& opts) {
  auto loaded = load_config_dir(opts.config_dir);
  if (!loaded) {
    spdlog::error("{}", loaded.error().to_string());
    return 1;
  }
  LoadedConfig& cfg = *loaded;
  spdlog::set_level(to_spdlog(opts.log_level.value_or(cfg.daemon.log_level)));
  for (const ConfigProblem& p : cfg.problems) spdlog::error("config: {}", p.to_string());

  if (opts.check_only) {
    std::printf("%zu device%s valid, %zu problem%s\n", cfg.devices.size(),
                cfg.devices.size() == 1 ? "" : "s", cfg.problems.size(),
                cfg.problems.size() == 1 ? "" : "s");
    return cfg.problems.empty() ? 0 : 1;
  }

  // Signals are taken through a signalfd; blocking them before any thread
  // exists keeps them away from the queue threads.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  if (pthread_sigmask(SIG_BLOCK, &mask, nullptr) != 0) {
    spdlog::error("cannot block signals");
    return 1;
  }
  UniqueFd sfd(::signalfd(-1, &mask, SFD_CLOEXEC));
  if (!sfd) {
    spdlog::error("{}", errno_error("signalfd").to_string());
    return 1;
  }

  ManagerOptions mo;
  mo.start_timeout = opts.start_timeout.value_or(cfg.daemon.start_timeout);
  if (const char* hook = std::getenv("UBLKD_TEST_UNPRIMED_TAG")) mo.unprimed_tag_device = hook;
  Manager manager(mo);
  if (auto r = manager.probe(); !r) {
    spdlog::error("{}", r.error().to_string());
    return 1;
  }

  for (const DeviceSpec& spec : cfg.devices) {
    if (!spec.autostart) continue;
    // A device that cannot go live is logged and torn down by add(); the
    // others still come up.
    (void)manager.add(spec);
  }
  spdlog::info("ublkd {} running: {} device(s) live", UBLKD_VERSION, manager.live_count());

  UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep) {
    spdlog::error("{}", errno_error("epoll_create1").to_string());
    return 1;
  }
  for (int fd : {sfd.get(), manager.event_fd()}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      spdlog::error("{}", errno_error("epoll_ctl").to_string());
      return 1;
    }
  }

  for (bool running = true; running;) {
    epoll_event evs[4];
    int n = ::epoll_wait(ep.get(), evs, 4, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      spdlog::error("{}", errno_error("epoll_wait").to_string());
      break;
    }
    for (int i = 0; i < n; ++i) {
      if (evs[i].data.fd == manager.event_fd()) {
        manager.check_queues();
        continue;
      }
      signalfd_siginfo si{};
      if (::read(sfd.get(), &si, sizeof(si)) != sizeof(si)) continue;
      if (si.ssi_signo == SIGHUP) {
        spdlog::warn("SIGHUP: configuration reload is not supported yet; ignored");
        continue;
      }
      spdlog::info("{} received: stopping {} device(s)", strsignal(static_cast<int>(si.ssi_signo)),
                   manager.live_count());
      running = false;
    }
  }
  manager.stop_all();
  spdlog::info("ublkd exiting");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opts;
  if (int rc = parse_args(argc, argv, opts); rc >= 0) return rc;

  auto logger = spdlog::stderr_color_mt("ublkd");
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(to_spdlog(opts.log_level.value_or(LogLevel::kInfo)));
  return run(opts);
}
