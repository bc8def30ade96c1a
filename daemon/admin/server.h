// The admin socket: accepts connections, checks each peer's credentials,
// frames newline-delimited requests and hands them to a handler, which may
// answer at once or later (an `add` answers when the device is live). All on
// the control thread's event loop; no connection can stall another.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "admin/protocol.h"
#include "base/error.h"
#include "base/unique_fd.h"
#include "event_loop.h"

namespace ublkd::admin {

struct ServerOptions {
  std::string socket_path;
  // Group whose members may use the socket besides root; nullopt = root only.
  std::optional<gid_t> admin_gid;
  std::chrono::milliseconds idle_timeout{10'000};
  size_t max_connections = 64;
};

struct Peer {
  pid_t pid;
  uid_t uid;
  gid_t gid;
};

class Server {
 public:
  // Sends the response for one request. Call exactly once, on the loop
  // thread; calling it after the client went away is harmless.
  using Reply = std::function<void(const nlohmann::json& response)>;
  using Handler = std::function<void(const Request& req, const Peer& peer, Reply reply)>;

  Server(EventLoop& loop, ServerOptions options, Handler handler);
  ~Server();

  // Binds the socket (replacing a stale one), mode 0660, group admin_gid.
  Result<void> listen();
  // Uses an already listening socket (socket activation).
  Result<void> adopt(UniqueFd listening);

  size_t connection_count() const { return conns_.size(); }

 private:
  struct Conn {
    UniqueFd fd;
    Peer peer{};
    std::string in;
    std::string out;
    bool busy = false;          // a request is being handled; later lines wait
    bool close_after_write = false;
    std::chrono::steady_clock::time_point last_activity;
  };

  Result<void> start_accepting();
  void on_accept();
  void on_conn_event(uint64_t id, uint32_t events);
  void process_lines(uint64_t id);
  void queue_response(uint64_t id, const nlohmann::json& response);
  void flush(uint64_t id);
  void close_conn(uint64_t id);
  void expire_idle();
  bool authorized(const Conn& c) const;

  EventLoop& loop_;
  ServerOptions options_;
  Handler handler_;
  UniqueFd listen_fd_;
  bool bound_here_ = false;
  std::map<uint64_t, std::unique_ptr<Conn>> conns_;
  uint64_t next_id_ = 1;
  // Lets replies that arrive after the server is gone do nothing.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace ublkd::admin
