// The interface every storage backend implements. It is deliberately small:
// a backend describes itself (size, what it supports) and serves requests on
// the queue thread that received them. A new backend is one new file.
#pragma once

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "base/error.h"
#include "queue/user_data.h"
#include "uapi/ublk.h"

struct io_uring;
struct io_uring_sqe;
struct io_uring_cqe;

namespace ublkd {

// Block operations the queue worker hands to a backend. The values are the
// kernel's UBLK_IO_OP_* numbers so the worker can pass them through.
enum class IoOp : uint8_t {
  kRead = uapi::kOpRead,
  kWrite = uapi::kOpWrite,
  kFlush = uapi::kOpFlush,
  kDiscard = uapi::kOpDiscard,
  kWriteZeroes = uapi::kOpWriteZeroes,
};

struct IoRequest {
  IoOp op;
  uint32_t flags;   // UBLK_IO_F_* bits (FUA, NOUNMAP, ...)
  uint64_t offset;  // bytes from the start of the device
  uint32_t length;  // bytes; 0 for FLUSH
  void* buffer;     // the tag's buffer: READ fills it, WRITE reads it
  uint16_t queue;
  uint16_t tag;
  // Zero copy (Backend::zero_copy()): buffer is null and the request's own
  // pages are in the queue ring's fixed buffer table at this index, for
  // READ_FIXED / WRITE_FIXED with addr = byte offset into the request.
  // -1 otherwise.
  int32_t buf_index = -1;
  // UBLK_F_USER_COPY (Backend::user_copy()): buffer is null and the
  // request's data is reached with pread (a WRITE's data) or pwrite (a
  // READ's) on copy_fd at copy_pos + the byte offset within the request.
  // -1 otherwise.
  int copy_fd = -1;
  uint64_t copy_pos = 0;
};

struct BackendFeatures {
  // The device has a write cache that FLUSH must drain; the kernel only sends
  // FLUSH to devices that advertise one.
  bool volatile_cache = false;
  // The kernel only sends DISCARD / WRITE_ZEROES when these are advertised.
  bool discard = false;
  bool write_zeroes = false;
  uint32_t discard_granularity = 0;  // bytes; 0 = logical block size
  // WRITE with UBLK_IO_F_FUA is durable on its own: the kernel sends FUA
  // instead of a write followed by a FLUSH.
  bool fua = false;
  // The storage refuses writes (an export the server offers read-only): the
  // device is read-only whatever its spec says.
  bool read_only = false;
  // The largest READ or WRITE the storage takes in one piece (a server's
  // maximum block size); 0: no limit of its own. The device's largest
  // request, and so each tag's buffer, is capped to it.
  uint32_t max_io_bytes = 0;
  // The most queues the backend can serve (a server that does not allow
  // several connections to one export: 1); 0: as many as the spec asks
  // for. The device gets no more; io_notes() says why.
  uint16_t max_queues = 0;
};

// Something a backend learned when it opened, for `list` and `info` (what
// a server negotiated: its size, block sizes, flags).
struct BackendFact {
  std::string key;
  std::variant<bool, uint64_t, std::string> value;
};

// What a queue thread lends an asynchronous backend: its io_uring, on which
// the backend queues its own SQEs. The worker routes their completions back
// to Backend::complete() (SQEs tied to a tag) or Backend::on_event() (SQEs
// of the whole queue) and submits everything queued in one io_uring_enter
// per loop pass.
//
// A backend that gets its answers some other way (a network library whose
// callbacks run while the backend feeds it socket events from on_event())
// reports each queued request's end with finish(). The worker keeps, per
// tag, whether its request still waits on the backend and until when: past
// that deadline (Backend::request_timeout() after submit(), or what the
// backend set with set_deadline()), or a stop's grace, the worker fails the
// request with EIO itself, and the tag stays unusable (new requests on it
// fail at once) until the backend ends the old I/O with finish() or a
// completion, because that I/O may still write the tag's buffer.
class QueueContext {
 public:
  virtual ~QueueContext() = default;
  virtual uint16_t queue_id() const = 0;
  virtual uint16_t depth() const = 0;
  // A zeroed SQE on the queue's ring (never nullptr: the ring has room for
  // one backend SQE per tag). Set its user_data with backend_user_data().
  virtual io_uring_sqe* get_sqe() = 0;
  // Fixed-file index of the fd the backend gave as attach_fd(), for
  // IOSQE_FIXED_FILE; -1 if it gave none.
  virtual int backend_file_index() const = 0;
  // Per-queue state of the backend, set in attach() (owned by the backend).
  void* backend_data = nullptr;

  // The request on `tag`, which submit() queued (kIoQueued), is done with
  // `result` (as submit() returns it); the worker commits it. Only on the
  // queue thread, from complete() or on_event() (or a callback they run),
  // never from submit() for the request being submitted (return its result
  // instead). For a tag whose request no longer waits (failed by its
  // deadline or a stop) it only marks the tag's old I/O as over.
  virtual void finish(uint16_t tag, int result) = 0;
  // Whether the request on `tag` still waits on the backend: false once
  // finished, or failed by its deadline or a stop (whose late result is
  // dropped; the backend should then end its I/O and finish() it).
  virtual bool waiting(uint16_t tag) const = 0;
  // When the worker fails the waiting request on `tag` with EIO; replaces
  // the deadline it set from Backend::request_timeout() (e.g. a request
  // held for a reconnect waits until the reconnect gives up, and one
  // re-sent gets its full timeout again). time_point::max(): none.
  virtual void set_deadline(uint16_t tag, std::chrono::steady_clock::time_point deadline) = 0;

  // user_data for a queue-level backend SQE (Backend::on_event); the ring
  // keeps room for kMaxBackendEvents of them besides one SQE per tag.
  static constexpr unsigned kMaxBackendEvents = 8;
  static uint64_t event_user_data(uint16_t cookie) { return user_data::backend_event(cookie); }

  // user_data for a backend SQE serving `tag`; `cookie` is the backend's
  // own (layout: queue/user_data.h).
  static constexpr uint64_t kBackendBit = user_data::kBackendBit;
  static uint64_t backend_user_data(uint16_t tag, uint16_t cookie) {
    return user_data::backend(tag, cookie);
  }
  static uint16_t tag_of(uint64_t ud) { return user_data::tag_of(ud); }
  static uint16_t cookie_of(uint64_t ud) { return user_data::cookie_of(ud); }
};

// Returned by Backend::submit() when the request's result will come later,
// through complete().
inline constexpr int kIoQueued = 1 << 30;

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view type() const = 0;
  virtual uint64_t size() const = 0;
  virtual BackendFeatures features() const = 0;
  // How requests are served, where an operator would want to know (for
  // the log when the device goes live); empty when there is nothing to say.
  virtual std::string io_notes() const { return {}; }
  // Whether submit() can serve READ and WRITE from a fixed buffer index
  // (IoRequest::buf_index) instead of a buffer of the server's: the device
  // then asks the kernel for zero copy where it offers it.
  virtual bool zero_copy() const { return false; }
  // Whether submit() ever reads or writes a request's data. A backend that
  // does not (null) serves requests without buffers: the device asks for
  // UBLK_F_USER_COPY, under which the kernel copies nothing on its own, and
  // IoRequest::buffer is null.
  virtual bool touches_data() const { return true; }
  // Whether the backend can serve READ and WRITE through IoRequest::copy_fd
  // instead of a buffer: the device then asks for UBLK_F_USER_COPY, and the
  // kernel copies once, between the request's pages and the backend's own
  // memory, instead of into a tag buffer that the backend copies again.
  // Such a backend still serves requests with a buffer (a kernel without
  // USER_COPY, a device recovered from a daemon that did not ask for it).
  virtual bool user_copy() const { return false; }

  // Serves one request on the calling queue thread and returns the ublk
  // result: bytes transferred for READ/WRITE, 0 for FLUSH/DISCARD/
  // WRITE_ZEROES, or -errno. Implementations must be safe to call from
  // several queue threads at once and must not block on anything but the
  // backing storage itself.
  virtual int handle(const IoRequest& req) noexcept = 0;

  // ---- asynchronous backends (optional) ----
  // An fd the queue rings should register as a fixed file (index given by
  // QueueContext::backend_file_index()), or -1.
  virtual int attach_fd() const { return -1; }
  // Called on each queue thread before its first request.
  virtual Result<void> attach(QueueContext& /*q*/) { return {}; }
  // Called on each queue thread after its last request.
  virtual void detach(QueueContext& /*q*/) noexcept {}

  // Makes everything written so far durable; called once the queues have
  // stopped, before the device is deleted, so that a clean stop leaves
  // nothing in a cache that the kernel never asked to flush.
  virtual Result<void> sync() { return {}; }
  // Serves a request: either a result as handle() returns it, or kIoQueued
  // after queueing SQEs on q's ring whose completions go to complete().
  virtual int submit(QueueContext& /*q*/, const IoRequest& req) noexcept { return handle(req); }
  // A completion of one of this backend's SQEs. Returns the request's final
  // result, or kIoQueued while more of its SQEs are outstanding (e.g. the
  // rest of a short write was resubmitted).
  virtual int complete(QueueContext& /*q*/, const io_uring_cqe& /*cqe*/) noexcept { return -EIO; }
  // A completion of a queue-level SQE (QueueContext::event_user_data):
  // a poll on a socket, a timer. Requests it ends go through finish().
  virtual void on_event(QueueContext& /*q*/, const io_uring_cqe& /*cqe*/) noexcept {}
  // How long a queued request may wait on the backend before the worker
  // fails it with EIO (QueueContext). nullopt: no limit, and no clock is
  // read per request.
  virtual std::optional<std::chrono::milliseconds> request_timeout() const { return std::nullopt; }
  // What the backend learned when it opened, for `list` and `info`.
  virtual std::vector<BackendFact> facts() const { return {}; }

  // ---- changing the size on request (optional) ----
  // Whether the storage can become `bytes` long (a multiple of the logical
  // block size), changing nothing: EOPNOTSUPP with the reason for a backend
  // that cannot; ENOTEMPTY naming the first such offset when shrinking
  // would drop data written at or beyond `bytes`, unless `force`. The
  // default cannot.
  virtual Result<void> check_resize(uint64_t bytes, bool force) const;
  // Makes the storage `bytes` long, after check_resize() passed: a grow
  // reads as zeros, a shrink drops what lay beyond. Requests may run
  // meanwhile on the queue threads; one still in flight beyond a shrink's
  // new end is served or fails, and never harms the process.
  virtual Result<void> resize(uint64_t bytes);

  // ---- storage whose size changes under it (optional) ----
  // For such a backend (an image its cluster resizes) size() is safe from
  // any thread, and `changed` is called, from any thread, each time it
  // changes, until the backend is destroyed. It must not block.
  virtual void watch_size(std::function<void()> /*changed*/) {}
};

inline Result<void> Backend::check_resize(uint64_t /*bytes*/, bool /*force*/) const {
  return Error(EOPNOTSUPP, "a " + std::string(type()) + " backend cannot change its size");
}

inline Result<void> Backend::resize(uint64_t bytes) {
  return check_resize(bytes, /*force=*/true);
}

}  // namespace ublkd
