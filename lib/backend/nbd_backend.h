// A device served by an NBD server (any: nbdkit, qemu-nbd, nbd-server, ...)
// through libnbd's asynchronous API, on the queue threads' own rings: one
// connection per queue, its socket polled with one-shot IORING_OP_POLL_ADD,
// replies drained per wake-up, each command's completion callback ending
// its request (QueueContext::finish). No threads of our own.
//
// Bounded: the connect (connect_timeout), each request (request_timeout,
// enforced by the queue worker), and a lost connection: the queue
// reconnects with backoff through the same poll, re-sends the requests it
// still holds (NBD commands are idempotent), and only when reconnect_timeout
// has passed are they failed with EIO; the device stays and serves again
// once the server is back.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "backend/backend.h"
#include "base/error.h"

struct nbd_handle;

namespace ublkd {

struct NbdHandleClose {
  void operator()(nbd_handle* h) const noexcept;
};
using NbdHandle = std::unique_ptr<nbd_handle, NbdHandleClose>;

// The URI as messages, `list` and `info` show it: a password in it (NBD
// URIs may carry user:password@) is masked. A TLS key is never in a URI,
// only the name of its file.
std::string nbd_shown_uri(const std::string& uri);

struct NbdBackendOptions {
  // nbd://, nbd+unix://, nbds://, nbds+unix:// (libnbd's URI syntax; a
  // file named in it, such as tls-psk-file=, is allowed).
  std::string uri;
  // How long one connection (socket, TLS, handshake) may take.
  std::chrono::milliseconds connect_timeout{10'000};
  // How long a request may wait for the server's answer before it fails
  // with EIO; 0: for ever.
  std::chrono::milliseconds request_timeout{30'000};
  // How long a queue whose connection died keeps reconnecting before the
  // requests it holds, and new ones, fail with EIO (it keeps trying).
  std::chrono::milliseconds reconnect_timeout{60'000};
  // The device's block size: a multiple of the server's minimum block size.
  uint32_t logical_block_size = 512;
  // Writes are refused whatever the server allows.
  bool read_only = false;
};

// What the server said at the handshake, checked again on every reconnect.
struct NbdExport {
  uint64_t size = 0;  // the export's own size
  uint32_t min_block = 0;
  uint32_t preferred_block = 0;
  uint32_t max_block = 0;
  bool read_only = false;
  bool flush = false;
  bool fua = false;
  bool trim = false;
  bool zero = false;
  bool multi_conn = false;
  bool tls = false;
  bool structured_replies = false;
};

class NbdBackend final : public Backend {
 public:
  // Connects once (bounded by connect_timeout) to learn the export; that
  // connection becomes queue 0's. Errors name the URI (never a key).
  static Result<std::unique_ptr<NbdBackend>> open(const NbdBackendOptions& options);

  ~NbdBackend() override;
  NbdBackend(const NbdBackend&) = delete;
  NbdBackend& operator=(const NbdBackend&) = delete;

  std::string_view type() const override { return "nbd"; }
  uint64_t size() const override { return size_; }
  BackendFeatures features() const override;
  std::string io_notes() const override;
  std::vector<BackendFact> facts() const override;
  Result<void> check_resize(uint64_t /*bytes*/, bool /*force*/) const override {
    return Error(EOPNOTSUPP, "an nbd device has the size its server gives the export");
  }
  std::optional<std::chrono::milliseconds> request_timeout() const override;

  // Requests need a queue's connection: only submit() serves them.
  int handle(const IoRequest& req) noexcept override;
  Result<void> attach(QueueContext& q) override;
  void detach(QueueContext& q) noexcept override;
  int submit(QueueContext& q, const IoRequest& req) noexcept override;
  void on_event(QueueContext& q, const io_uring_cqe& cqe) noexcept override;

  // Connections that were lost and made again, over all queues.
  uint64_t reconnects() const { return reconnects_.load(std::memory_order_relaxed); }

 private:
  struct Slot;
  struct Queue;
  friend struct Slot;

  NbdBackend(NbdBackendOptions options, NbdHandle first, NbdExport info, uint64_t size);

  static int on_reply(void* user_data, int* error);
  void replied(Slot& s, int error) noexcept;
  int issue(Queue& q, Slot& s) noexcept;
  void update_polls(Queue& q) noexcept;
  void on_socket(Queue& q, bool readable) noexcept;
  void on_tick(Queue& q) noexcept;
  void lose_connection(Queue& q) noexcept;
  void start_attempt(Queue& q) noexcept;
  void attempt_failed(Queue& q, std::string why) noexcept;
  void connected(Queue& q) noexcept;
  void drop_handle(Queue& q) noexcept;
  void release_abandoned(Queue& q) noexcept;
  void arm_tick(Queue& q) noexcept;
  void flush_before_close(Queue& q) noexcept;
  void note_error(std::string why);

  const NbdBackendOptions options_;
  const std::string shown_uri_;
  const NbdExport export_;
  // Writes are refused: the spec says so, or the server does.
  const bool read_only_;
  const uint64_t size_;
  // The connection open() made, until queue 0 takes it.
  std::mutex first_mu_;
  NbdHandle first_;
  std::atomic<uint64_t> reconnects_{0};
  // Why the last connection attempt of any queue failed, for `info`.
  mutable std::mutex error_mu_;
  std::string last_error_;
};

}  // namespace ublkd
