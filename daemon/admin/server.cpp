#include "admin/server.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <vector>

#include <spdlog/spdlog.h>

namespace ublkd::admin {

using std::chrono::steady_clock;

Server::Server(EventLoop& loop, ServerOptions options, Handler handler)
    : loop_(loop), options_(std::move(options)), handler_(std::move(handler)) {}

Server::~Server() {
  *alive_ = false;
  for (auto& [id, c] : conns_) loop_.remove(c->fd.get());
  if (listen_fd_) {
    loop_.remove(listen_fd_.get());
    if (bound_here_) ::unlink(options_.socket_path.c_str());
  }
}

Result<void> Server::listen() {
  const std::string& path = options_.socket_path;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path))
    return Error(ENAMETOOLONG, "socket path '" + path + "' is empty or too long");
  std::copy(path.begin(), path.end(), addr.sun_path);

  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  if (ec) return Error(ec.value(), "create directory for socket " + path);

  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return errno_error("socket");
  // A socket file left by a daemon that died is in the way; a live daemon
  // still answers on it, and then we must not steal its path.
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return Error(EEXIST, path + " exists and is not a socket");
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe && ::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0)
      return Error(EADDRINUSE, "another ublkd is already listening on " + path);
    ::unlink(path.c_str());
  }
  // Created with no permissions for others from the first moment; the mode
  // and group are then set on the path before anyone can be let in.
  const mode_t old = ::umask(0177);
  const int rc = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::umask(old);
  if (rc != 0) return errno_error("bind " + path);
  bound_here_ = true;
  if (options_.admin_gid && ::chown(path.c_str(), 0, *options_.admin_gid) != 0)
    return errno_error("chown " + path);
  if (::chmod(path.c_str(), 0660) != 0) return errno_error("chmod " + path);
  if (::listen(fd.get(), 64) != 0) return errno_error("listen " + path);
  listen_fd_ = std::move(fd);
  return start_accepting();
}

Result<void> Server::adopt(UniqueFd listening) {
  const int flags = ::fcntl(listening.get(), F_GETFL);
  if (flags < 0 || ::fcntl(listening.get(), F_SETFL, flags | O_NONBLOCK) != 0)
    return errno_error("make the inherited socket non-blocking");
  listen_fd_ = std::move(listening);
  return start_accepting();
}

Result<void> Server::start_accepting() {
  if (auto r = loop_.add(listen_fd_.get(), EPOLLIN, [this](uint32_t) { on_accept(); }); !r)
    return r;
  return loop_.every(std::chrono::milliseconds(1000), [this] { expire_idle(); });
}

bool Server::authorized(const Conn& c) const {
  if (c.peer.uid == 0) return true;
  if (!options_.admin_gid) return false;
  if (c.peer.gid == *options_.admin_gid) return true;
  // SO_PEERGROUPS: the peer's supplementary groups as they were at connect().
  std::vector<gid_t> groups(64);
  for (;;) {
    socklen_t len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(c.fd.get(), SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) {
      groups.resize(len / sizeof(gid_t));
      break;
    }
    if (errno != ERANGE || groups.size() > 65536) return false;
    groups.resize(len / sizeof(gid_t) + 1);
  }
  return std::find(groups.begin(), groups.end(), *options_.admin_gid) != groups.end();
}

void Server::on_accept() {
  for (;;) {
    UniqueFd fd(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
        spdlog::warn("admin socket: accept: {}", std::strerror(errno));
      return;
    }
    auto c = std::make_unique<Conn>();
    c->fd = std::move(fd);
    c->last_activity = steady_clock::now();
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(c->fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      spdlog::warn("admin socket: cannot read peer credentials: {}", std::strerror(errno));
      continue;
    }
    c->peer = Peer{cred.pid, cred.uid, cred.gid};
    const uint64_t id = next_id_++;
    const int cfd = c->fd.get();
    const bool ok = authorized(*c);
    const bool full = conns_.size() >= options_.max_connections;
    conns_[id] = std::move(c);
    if (auto r = loop_.add(cfd, EPOLLIN | EPOLLRDHUP,
                           [this, id](uint32_t ev) { on_conn_event(id, ev); });
        !r) {
      conns_.erase(id);
      continue;
    }
    if (!ok) {
      spdlog::warn("admin socket: permission denied for uid {} (pid {})", cred.uid, cred.pid);
      queue_response(id,
                     error_response(std::nullopt, {code::kPermissionDenied,
                                                   "uid " + std::to_string(cred.uid) +
                                                       " is neither root nor in the admin group"}));
      conns_[id]->close_after_write = true;
      flush(id);
    } else if (full) {
      queue_response(id, error_response(std::nullopt, {code::kBusy, "too many connections"}));
      conns_[id]->close_after_write = true;
      flush(id);
    }
  }
}

void Server::on_conn_event(uint64_t id, uint32_t events) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  if (events & EPOLLOUT) {
    flush(id);
    if (!conns_.count(id)) return;
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    if (c.close_after_write) {
      // Not reading any more; just let the pending error go out.
      if (events & (EPOLLHUP | EPOLLERR)) close_conn(id);
      return;
    }
    char buf[65536];
    for (;;) {
      const ssize_t n = ::read(c.fd.get(), buf, sizeof(buf));
      if (n > 0) {
        c.in.append(buf, static_cast<size_t>(n));
        c.last_activity = steady_clock::now();
        // A line longer than the limit is refused as soon as that is
        // certain, and a client piling up requests while one is handled
        // cannot make us buffer without bound either.
        const size_t nl = c.in.find('\n');
        const bool line_too_long =
            c.in.size() > kMaxRequestLine && (nl == std::string::npos || nl + 1 > kMaxRequestLine);
        if (line_too_long || c.in.size() > 4 * kMaxRequestLine) {
          queue_response(id, error_response(std::nullopt, {code::kRequestTooLarge,
                                                           "request line exceeds 1 MiB"}));
          c.close_after_write = true;
          c.in.clear();
          flush(id);
          return;
        }
        continue;
      }
      if (n == 0) {
        // The client closed its side. Answers still owed go nowhere.
        close_conn(id);
        return;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      close_conn(id);
      return;
    }
    process_lines(id);
  }
}

void Server::process_lines(uint64_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  while (!c.busy && !c.close_after_write) {
    const size_t nl = c.in.find('\n');
    if (nl == std::string::npos) return;
    std::string line = c.in.substr(0, nl);
    c.in.erase(0, nl + 1);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (line.size() + 1 > kMaxRequestLine) {
      queue_response(
          id, error_response(std::nullopt, {code::kRequestTooLarge, "request line exceeds 1 MiB"}));
      c.close_after_write = true;
      flush(id);
      return;
    }
    auto parsed = parse_request(line);
    if (!parsed) {
      queue_response(id, error_response(parsed.error().id, parsed.error().error));
      flush(id);
      if (!conns_.count(id)) return;
      continue;
    }
    c.busy = true;
    std::weak_ptr<bool> alive = alive_;
    handler_(parsed.value(), c.peer, [this, id, alive](const nlohmann::json& resp) {
      if (alive.expired()) return;
      auto cit = conns_.find(id);
      if (cit == conns_.end()) return;
      cit->second->busy = false;
      cit->second->last_activity = steady_clock::now();
      queue_response(id, resp);
      flush(id);
      // Requests that arrived while this one was handled.
      if (conns_.count(id)) process_lines(id);
    });
    // The handler may have answered (and even closed) synchronously.
    if (!conns_.count(id)) return;
  }
}

void Server::queue_response(uint64_t id, const nlohmann::json& response) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  it->second->out += to_line(response);
}

void Server::flush(uint64_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  while (!c.out.empty()) {
    const ssize_t n = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL);
    if (n > 0) {
      c.out.erase(0, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      (void)loop_.modify(c.fd.get(), EPOLLIN | EPOLLRDHUP | EPOLLOUT);
      return;
    }
    close_conn(id);
    return;
  }
  (void)loop_.modify(c.fd.get(), EPOLLIN | EPOLLRDHUP);
  if (c.close_after_write) close_conn(id);
}

void Server::close_conn(uint64_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  loop_.remove(it->second->fd.get());
  conns_.erase(it);
}

void Server::expire_idle() {
  const auto now = steady_clock::now();
  std::vector<uint64_t> idle;
  for (const auto& [id, c] : conns_) {
    // A connection waiting for its answer is not idle: the wait is ours.
    if (!c->busy && now - c->last_activity > options_.idle_timeout) idle.push_back(id);
  }
  for (uint64_t id : idle) {
    spdlog::debug("admin socket: closing idle connection of uid {}", conns_[id]->peer.uid);
    close_conn(id);
  }
}

}  // namespace ublkd::admin
