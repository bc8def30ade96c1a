// Bytes a client sends to the admin socket, through the daemon's own request
// path: a client connects to a real admin::Server on a Unix socket and sends
// them, the server frames them into lines, parses each, and hands the
// requests to the daemon's AdminHandler, whose answers come back over the
// socket. Anyone in the admin group can send these bytes, so nothing on that
// path may crash, hang or throw, and every answer must be one JSON object
// on one line, in order.
//
// The manager behind the handler is shut down (it has no devices) before
// the client connects: every request is checked as the daemon checks it,
// but none can reach a backend, so an `add` the fuzzer writes never
// creates a file or touches a device. ublkd answers such requests
// shutting-down; the checks before that are what is fuzzed.
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "admin/server.h"
#include "daemon.h"
#include "event_loop.h"
#include "fuzz_check.h"
#include "manager.h"

namespace admin = ublkd::admin;
using nlohmann::json;

namespace {

// Sent after the input: its answer comes after every earlier one.
constexpr std::string_view kSentinel = "\n{\"op\": \"version\", \"id\": \"fuzz-end\"}\n";
// Every request is answered at once here (there are no devices to wait
// for); much longer than this is a hang.
constexpr std::chrono::milliseconds kAnswerBound{5000};

std::filesystem::path g_dir;

struct Client {
  ublkd::UniqueFd fd;
  std::string out;
  std::string in;
  bool done = false;
};

// Checks one answer line; true for the sentinel's.
bool check_answer(const std::string& line) {
  json r = json::parse(line, nullptr, false);
  FUZZ_CHECK(!r.is_discarded() && r.is_object(), "an answer is one JSON object on one line");
  FUZZ_CHECK(r.contains("ok") && r["ok"].is_boolean(), "an answer says ok true or false");
  if (!r["ok"].get<bool>()) {
    FUZZ_CHECK(r.contains("error") && r["error"].contains("code") &&
                   r["error"]["code"].is_string() && !r["error"]["code"].get<std::string>().empty(),
               "an error answer has a code");
  }
  auto id = r.find("id");
  return id != r.end() && *id == "fuzz-end";
}

void on_client(ublkd::EventLoop& loop, Client& c, uint32_t events) {
  if ((events & EPOLLOUT) && !c.out.empty()) {
    const ssize_t n = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL);
    if (n > 0) c.out.erase(0, static_cast<size_t>(n));
    if (c.out.empty()) (void)loop.modify(c.fd.get(), EPOLLIN);
  }
  if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::recv(c.fd.get(), buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      c.in.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    // n == 0: the server closed the connection (a request it refuses to
    // read on, such as a line over the limit); an error: the same.
    if (n == 0 || errno != EAGAIN) c.done = true;
    break;
  }
  for (size_t nl; (nl = c.in.find('\n')) != std::string::npos;) {
    const std::string line = c.in.substr(0, nl);
    c.in.erase(0, nl + 1);
    if (check_answer(line)) c.done = true;
  }
  if (c.done) loop.stop();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  std::string tmpl = (std::filesystem::temp_directory_path() / "fuzz-admin-XXXXXX").string();
  FUZZ_CHECK(::mkdtemp(tmpl.data()) != nullptr, "a temporary directory");
  g_dir = tmpl;
  std::filesystem::create_directories(g_dir / "config");
  std::atexit([] {
    std::error_code ec;
    std::filesystem::remove_all(g_dir, ec);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto loop_r = ublkd::EventLoop::create();
  FUZZ_CHECK(loop_r.ok(), "an event loop");
  ublkd::EventLoop& loop = **loop_r;

  ublkd::ManagerOptions mo;
  mo.control_path = (g_dir / "no-control").string();
  mo.config_dir = g_dir / "config";
  ublkd::Manager manager(loop, mo);
  bool shut = false;
  manager.shutdown([&shut](std::vector<std::string>) { shut = true; });
  FUZZ_CHECK(shut, "a manager without devices shuts down at once");
  ublkd::AdminHandler handler(manager, g_dir / "config", ublkd::SpecDefaults{2, 128});

  admin::ServerOptions so;
  so.socket_path = (g_dir / "admin.sock").string();
  admin::Server server(loop, so,
                       [&handler](const admin::Request& req, const admin::Peer&,
                                  admin::Server::Reply reply) { handler.handle(req, reply); });
  FUZZ_CHECK(server.listen().ok(), "the admin socket listens");

  Client c;
  // Non-blocking: the server reads on this same thread, so a client that
  // blocked in send() on a full socket would wait for itself.
  c.fd.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::copy(so.socket_path.begin(), so.socket_path.end(), addr.sun_path);
  FUZZ_CHECK(::connect(c.fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0,
             "the client connects");
  c.out.assign(reinterpret_cast<const char*>(data), size);
  c.out += kSentinel;
  FUZZ_CHECK(
      loop.add(c.fd.get(), EPOLLIN | EPOLLOUT, [&loop, &c](uint32_t ev) { on_client(loop, c, ev); })
          .ok(),
      "the client is watched");
  const auto started = std::chrono::steady_clock::now();
  FUZZ_CHECK(loop.every(std::chrono::milliseconds(100),
                        [&] {
                          FUZZ_CHECK(std::chrono::steady_clock::now() - started < kAnswerBound,
                                     "every request is answered within 5 s");
                        })
                 .ok(),
             "a timer");
  FUZZ_CHECK(loop.run().ok(), "the event loop runs");
  FUZZ_CHECK(c.done, "the client got its answers");
  loop.remove(c.fd.get());
  return 0;
}
