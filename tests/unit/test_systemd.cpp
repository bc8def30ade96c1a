// The promises of "Under systemd" in docs/configuration.md that hold without
// systemd running: the STATUS= text, when READY/RELOADING/STOPPING go out
// (and that they reach NOTIFY_SOCKET), which sockets ublkd accepts from
// socket activation, and the watchdog's period and ping interval.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/unique_fd.h"
#include "systemd.h"

using namespace ublkd;
using S = DeviceState;

TEST_CASE("STATUS= counts live devices and names the failed ones", "[systemd][status]") {
  const auto running = ServicePhase::kRunning;
  CHECK(status_text({}, running) == "0 devices live");
  CHECK(status_text({{"mem0", S::kLive}}, running) == "1 device live");
  CHECK(status_text({{"a", S::kLive}, {"b", S::kLive}, {"c", S::kLive}}, running) ==
        "3 devices live");
  CHECK(status_text({{"disk0", S::kLive}, {"disk1", S::kFailed}, {"mem0", S::kLive}}, running) ==
        "2 devices live, 1 failed (disk1)");
  CHECK(status_text({{"disk1", S::kFailed}}, running) == "0 devices live, 1 failed (disk1)");
  CHECK(status_text({{"a", S::kFailed}, {"b", S::kFailed}, {"c", S::kFailed}, {"d", S::kFailed},
                     {"e", S::kFailed}, {"f", S::kFailed}},
                    running) == "0 devices live, 6 failed (a, b, c, d, e, ...)");
}

TEST_CASE("STATUS= counts every state before live as starting", "[systemd][status]") {
  const auto running = ServicePhase::kRunning;
  CHECK(status_text({{"a", S::kNew}, {"b", S::kStartPending}}, running) == "starting 2 devices");
  CHECK(status_text({{"a", S::kAdded}, {"b", S::kLive}, {"c", S::kQueuesPrimed}}, running) ==
        "1 device live, starting 2 devices");
  CHECK(status_text({{"a", S::kParamsSet}, {"b", S::kFailed}}, running) ==
        "starting 1 device, 1 failed (b)");
  CHECK(status_text({{"a", S::kRecovering}}, running) == "starting 1 device");
}

TEST_CASE("STATUS= says when ublkd reloads or shuts down", "[systemd][status]") {
  CHECK(status_text({{"a", S::kLive}, {"b", S::kNew}}, ServicePhase::kReloading) ==
        "reloading: 1 device live, starting 1 device");
  CHECK(status_text({{"a", S::kStopping}, {"b", S::kStopping}}, ServicePhase::kStopping) ==
        "shutting down: stopping 2 devices");
  CHECK(status_text({{"a", S::kLive}, {"b", S::kStopping}}, ServicePhase::kStopping) ==
        "shutting down: 1 device live, stopping 1 device");
  CHECK(status_text({}, ServicePhase::kStopping) == "shutting down: 0 devices live");
}

namespace {

struct Sent {
  std::vector<std::string> messages;
  ServiceNotifier notifier{[this](const std::string& m) { messages.push_back(m); }};
  std::vector<std::string> take() { return std::exchange(messages, {}); }
};

}  // namespace

TEST_CASE("READY=1 goes out once start-up is over, with the status, and only once",
          "[systemd][notify]") {
  Sent s;
  s.notifier.devices_changed({{"mem0", S::kNew}, {"disk0", S::kNew}});
  CHECK(s.take() == std::vector<std::string>{"STATUS=starting 2 devices"});
  // The same text again is not news.
  s.notifier.devices_changed({{"mem0", S::kAdded}, {"disk0", S::kNew}});
  CHECK(s.take().empty());
  s.notifier.devices_changed({{"mem0", S::kLive}, {"disk0", S::kNew}});
  s.notifier.devices_changed({{"mem0", S::kLive}, {"disk0", S::kFailed}});
  CHECK(s.take() == std::vector<std::string>{"STATUS=1 device live, starting 1 device",
                                             "STATUS=1 device live, 1 failed (disk0)"});
  s.notifier.ready();
  CHECK(s.take() == std::vector<std::string>{"READY=1\nSTATUS=1 device live, 1 failed (disk0)"});
  s.notifier.ready();
  CHECK(s.take().empty());
}

TEST_CASE("a reload is RELOADING=1 ... READY=1, once however many overlap", "[systemd][notify]") {
  Sent s;
  s.notifier.devices_changed({{"mem0", S::kLive}});
  s.notifier.ready();
  s.take();

  s.notifier.reload_begin();
  auto m = s.take();
  REQUIRE(m.size() == 1);
  CHECK(m[0].rfind("RELOADING=1\nMONOTONIC_USEC=", 0) == 0);
  CHECK(m[0].find("\nSTATUS=reloading: 1 device live") != std::string::npos);

  s.notifier.reload_begin();  // SIGHUP while `ublkctl reload` runs
  s.notifier.devices_changed({{"mem0", S::kLive}, {"new0", S::kNew}});
  CHECK(s.take() == std::vector<std::string>{"STATUS=reloading: 1 device live, starting 1 device"});
  s.notifier.devices_changed({{"mem0", S::kLive}, {"new0", S::kLive}});
  s.notifier.reload_end();
  CHECK(s.take() == std::vector<std::string>{"STATUS=reloading: 2 devices live"});
  s.notifier.reload_end();
  CHECK(s.take() == std::vector<std::string>{"READY=1\nSTATUS=2 devices live"});
  s.notifier.reload_end();  // unbalanced: ignored
  CHECK(s.take().empty());
}

TEST_CASE("a reload before start-up is over sends no RELOADING=1", "[systemd][notify]") {
  Sent s;
  s.notifier.devices_changed({{"mem0", S::kNew}});
  s.take();
  s.notifier.reload_begin();
  s.notifier.reload_end();
  for (const auto& msg : s.take()) CHECK(msg.rfind("STATUS=", 0) == 0);
  s.notifier.devices_changed({{"mem0", S::kLive}});
  s.notifier.ready();
  CHECK(s.take() ==
        std::vector<std::string>{"STATUS=1 device live", "READY=1\nSTATUS=1 device live"});
}

TEST_CASE("STOPPING=1 ends readiness: only STATUS= follows", "[systemd][notify]") {
  Sent s;
  s.notifier.devices_changed({{"mem0", S::kLive}, {"mem1", S::kStartPending}});
  s.take();
  s.notifier.stopping();
  CHECK(s.take() == std::vector<std::string>{
                        "STOPPING=1\nSTATUS=shutting down: 1 device live, starting 1 device"});
  // The start cut short by the shutdown ends here; ublkd never was ready.
  s.notifier.devices_changed({{"mem0", S::kStopping}, {"mem1", S::kFailed}});
  s.notifier.ready();
  s.notifier.reload_begin();
  s.notifier.reload_end();
  s.notifier.stopping();
  CHECK(s.take() ==
        std::vector<std::string>{"STATUS=shutting down: stopping 1 device, 1 failed (mem1)"});
  s.notifier.watchdog();
  CHECK(s.take() == std::vector<std::string>{"WATCHDOG=1"});
}

TEST_CASE("a reload under way when shutdown starts ends without READY=1", "[systemd][notify]") {
  Sent s;
  s.notifier.ready();
  s.notifier.reload_begin();
  s.take();
  s.notifier.stopping();
  s.notifier.reload_end();
  for (const auto& msg : s.take()) CHECK(msg.find("READY=1") == std::string::npos);
}

namespace {

// Sets an environment variable for one test and puts back what was there.
class EnvVar {
 public:
  EnvVar(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value.c_str(), 1);
  }
  ~EnvVar() {
    if (old_) ::setenv(name_, old_->c_str(), 1);
    else ::unsetenv(name_);
  }
  EnvVar(const EnvVar&) = delete;
  EnvVar& operator=(const EnvVar&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace

TEST_CASE("under systemd the notifications reach NOTIFY_SOCKET", "[systemd][notify]") {
  char tmpl[] = "/tmp/ublkd-test-notify-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  const std::string path = dir + "/notify";
  UniqueFd sock(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  REQUIRE(sock);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::copy(path.begin(), path.end(), addr.sun_path);
  REQUIRE(::bind(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  {
    EnvVar env("NOTIFY_SOCKET", path);
    ServiceNotifier n;  // sd_notify
    n.devices_changed({{"mem0", S::kLive}});
    n.ready();
    n.watchdog();
  }
  std::vector<std::string> got;
  char buf[4096];
  for (;;) {
    const ssize_t len = ::recv(sock.get(), buf, sizeof(buf), MSG_DONTWAIT);
    if (len < 0) break;
    got.emplace_back(buf, static_cast<size_t>(len));
  }
  CHECK(got == std::vector<std::string>{"STATUS=1 device live", "READY=1\nSTATUS=1 device live",
                                        "WATCHDOG=1"});
  sock.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

TEST_CASE("WatchdogSec= is read from WATCHDOG_USEC for this process only", "[systemd][watchdog]") {
  EnvVar usec("WATCHDOG_USEC", "10000000");
  {
    EnvVar pid("WATCHDOG_PID", std::to_string(::getpid()));
    auto w = watchdog_period();
    REQUIRE(w.ok());
    REQUIRE(w->has_value());
    CHECK(**w == std::chrono::seconds(10));
  }
  {
    // Meant for another process (one that forked us, say).
    EnvVar pid("WATCHDOG_PID", std::to_string(::getpid() + 1));
    auto w = watchdog_period();
    REQUIRE(w.ok());
    CHECK_FALSE(w->has_value());
  }
}

TEST_CASE("the watchdog is pinged at half its period", "[systemd][watchdog]") {
  using namespace std::chrono;
  CHECK(watchdog_ping_interval(seconds(10)) == milliseconds(5000));
  CHECK(watchdog_ping_interval(microseconds(3001)) == milliseconds(1));
  CHECK(watchdog_ping_interval(microseconds(1)) == milliseconds(1));
}

TEST_CASE("outside systemd there is no watchdog and no socket", "[systemd]") {
  // The test runner is not a unit with WatchdogSec= or a .socket.
  if (std::getenv("WATCHDOG_USEC") == nullptr) {
    auto w = watchdog_period();
    REQUIRE(w.ok());
    CHECK_FALSE(w->has_value());
  }
  if (std::getenv("LISTEN_FDS") == nullptr) {
    auto l = fds_from_systemd();
    REQUIRE(l.ok());
    CHECK_FALSE(l->socket);
    CHECK(l->stored.empty());
  }
}

namespace {

// A unix socket bound in a fresh directory, listening or not.
struct UnixSocket {
  explicit UnixSocket(int type, bool listening) {
    char tmpl[] = "/tmp/ublkd-test-sock-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir = tmpl;
    path = dir + "/s.sock";
    fd.reset(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    REQUIRE(fd);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::copy(path.begin(), path.end(), addr.sun_path);
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    if (listening) REQUIRE(::listen(fd.get(), 4) == 0);
  }
  ~UnixSocket() {
    fd.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  std::string dir;
  std::string path;
  UniqueFd fd;
};

}  // namespace

TEST_CASE("socket activation: no fds means ublkd binds the socket itself", "[systemd][socket]") {
  auto r = check_listen_fds(0, 3);
  REQUIRE(r.ok());
  CHECK_FALSE(r->has_value());
}

TEST_CASE("socket activation: one listening unix stream socket is taken", "[systemd][socket]") {
  UnixSocket s(SOCK_STREAM, true);
  auto r = check_listen_fds(1, s.fd.get());
  REQUIRE(r.ok());
  REQUIRE(r->has_value());
  CHECK(**r == s.fd.get());
  CHECK(unix_socket_path(s.fd.get()) == s.path);
}

TEST_CASE("socket activation: anything else is refused, saying what was passed",
          "[systemd][socket]") {
  const std::string wanted =
      "; ublkd takes one listening AF_UNIX SOCK_STREAM socket (ListenStream=/path in ublkd.socket)";

  SECTION("two sockets") {
    auto r = check_listen_fds(2, 3);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message() == "systemd passed 2 file descriptors (fds 3-4)" + wanted);
  }
  SECTION("a connected socket of a socketpair") {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    UniqueFd a(sv[0]), b(sv[1]);
    auto r = check_listen_fds(1, a.get());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message() == "systemd passed fd " + std::to_string(a.get()) +
                                     ", an AF_UNIX SOCK_STREAM socket that is not listening" +
                                     wanted);
    CHECK(unix_socket_path(a.get()).empty());
  }
  SECTION("a bound unix stream socket that does not listen") {
    UnixSocket s(SOCK_STREAM, false);
    auto r = check_listen_fds(1, s.fd.get());
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message(), Catch::Contains("that is not listening"));
  }
  SECTION("a unix datagram socket (ListenDatagram=)") {
    UnixSocket s(SOCK_DGRAM, false);
    auto r = check_listen_fds(1, s.fd.get());
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message(),
               Catch::StartsWith("systemd passed fd " + std::to_string(s.fd.get()) +
                                 ", an AF_UNIX SOCK_DGRAM socket"));
  }
  SECTION("a listening unix seqpacket socket (ListenSequentialPacket=)") {
    UnixSocket s(SOCK_SEQPACKET, true);
    auto r = check_listen_fds(1, s.fd.get());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message() == "systemd passed fd " + std::to_string(s.fd.get()) +
                                     ", an AF_UNIX SOCK_SEQPACKET socket" + wanted);
  }
  SECTION("a listening TCP socket (ListenStream=PORT)") {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(fd);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(::listen(fd.get(), 4) == 0);
    auto r = check_listen_fds(1, fd.get());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message() == "systemd passed fd " + std::to_string(fd.get()) +
                                     ", an AF_INET SOCK_STREAM socket" + wanted);
  }
  SECTION("a pipe (ListenFIFO=)") {
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    UniqueFd r_end(p[0]), w_end(p[1]);
    auto r = check_listen_fds(1, r_end.get());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message() ==
          "systemd passed fd " + std::to_string(r_end.get()) + ", not a socket" + wanted);
  }
  SECTION("sd_listen_fds failed") {
    auto r = check_listen_fds(-EBADMSG, 3);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == EBADMSG);
    CHECK_THAT(r.error().message(), Catch::StartsWith("cannot take the sockets systemd passed"));
  }
}

TEST_CASE("systemd fds: stored memory is told from the socket by its name", "[systemd][socket]") {
  UnixSocket s(SOCK_STREAM, true);
  // Consecutive fds, as systemd passes them: the socket, then two memfds.
  UniqueFd base(::fcntl(s.fd.get(), F_DUPFD_CLOEXEC, 100));
  REQUIRE(base.get() >= 100);
  const int first = base.get();
  UniqueFd m1(::memfd_create("a", MFD_CLOEXEC));
  UniqueFd m2(::memfd_create("b", MFD_CLOEXEC));
  REQUIRE(::dup3(m1.get(), first + 1, O_CLOEXEC) == first + 1);
  REQUIRE(::dup3(m2.get(), first + 2, O_CLOEXEC) == first + 2);
  (void)base.release();  // owned by the result from here on

  auto r = split_systemd_fds(3, first, {"ublkd.socket", "mem-disk0", "mem-x.y"});
  REQUIRE(r.ok());
  CHECK(r->socket.get() == first);
  REQUIRE(r->stored.size() == 2);
  CHECK(r->stored.at("mem-disk0").get() == first + 1);
  CHECK(r->stored.at("mem-x.y").get() == first + 2);
}

TEST_CASE("systemd fds: only memory, no socket", "[systemd][socket]") {
  UniqueFd m(::memfd_create("a", MFD_CLOEXEC));
  UniqueFd moved(::fcntl(m.get(), F_DUPFD_CLOEXEC, 100));
  const int fd = moved.release();
  auto r = split_systemd_fds(1, fd, {"mem-d"});
  REQUIRE(r.ok());
  CHECK_FALSE(r->socket);
  CHECK(r->stored.count("mem-d") == 1);
}

TEST_CASE("systemd fds: an unnamed non-socket is refused", "[systemd][socket]") {
  UniqueFd m(::memfd_create("a", MFD_CLOEXEC));
  const int fd = UniqueFd(::fcntl(m.get(), F_DUPFD_CLOEXEC, 100)).release();
  auto r = split_systemd_fds(1, fd, {"stored"});
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.error().message(), Catch::Contains("not a socket"));
  // The refused fd was closed.
  CHECK(::fcntl(fd, F_GETFD) == -1);
}
