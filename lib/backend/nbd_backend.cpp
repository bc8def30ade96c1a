#include "backend/nbd_backend.h"

#include <libnbd.h>
#include <liburing.h>
#include <poll.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <vector>

#include "uapi/ublk.h"

namespace ublkd {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

void NbdHandleClose::operator()(nbd_handle* h) const noexcept {
  nbd_close(h);
}

namespace {

// Queue-level SQEs (QueueContext::event_user_data): the kind in the low
// bits of the cookie, the handle's generation above it, so that a poll of a
// connection already dropped is recognised when its completion comes.
enum EventKind : uint16_t { kCancel = 0, kPollIn = 1, kPollOut = 2, kTimer = 3 };
constexpr unsigned kKindBits = 2;
constexpr uint16_t cookie(EventKind kind, uint16_t gen) {
  return static_cast<uint16_t>(kind | (gen << kKindBits));
}
constexpr EventKind kind_of(uint16_t c) {
  return static_cast<EventKind>(c & ((1u << kKindBits) - 1));
}
constexpr uint16_t gen_of(uint16_t c) {
  return static_cast<uint16_t>(c >> kKindBits);
}
constexpr uint16_t kGenMask = (1u << (16 - kKindBits)) - 1;

// While a queue has no connection it looks at its reconnect every tick.
constexpr milliseconds kTickPeriod{50};
constexpr milliseconds kFirstBackoff{50};
constexpr milliseconds kMaxBackoff{1'000};
// The flush when a queue stops (Backend::sync's part for a network
// backend): bounded, since a server that stopped answering must not hold
// the stop.
constexpr milliseconds kStopFlushTimeout{2'000};
// NBD's default when a server advertises no maximum block size: larger
// requests may make a server drop the connection.
constexpr uint32_t kDefaultMaxBlock = 32u << 20;
constexpr std::string_view kOneQueueNote =
    "one queue: the server does not allow several connections to the export (no multi-conn)";

// Errors of the connection rather than of the command: the command is kept
// and re-sent on the next connection. ESHUTDOWN: the server is going away
// (SIGTERM) and answered the commands it still had with it.
bool transport_error(int err) {
  return err == ENOTCONN || err == ECONNRESET || err == EPIPE || err == ESHUTDOWN ||
         err == ECONNABORTED || err == ECONNREFUSED;
}

std::string nbd_error_text() {
  const char* e = nbd_get_error();
  return e != nullptr ? e : "unknown libnbd error";
}

int nbd_errno_or(int fallback) {
  const int e = nbd_get_errno();
  return e > 0 ? e : fallback;
}

// The URI without a password (nbd URIs may carry user:password@).
}  // namespace

std::string nbd_shown_uri(const std::string& uri) {
  const size_t scheme = uri.find("://");
  if (scheme == std::string::npos) return uri;
  const size_t start = scheme + 3;
  const size_t end = uri.find_first_of("/?#", start);
  const size_t at = uri.rfind('@', end == std::string::npos ? uri.size() : end);
  if (at == std::string::npos || at < start) return uri;
  const size_t colon = uri.find(':', start);
  if (colon == std::string::npos || colon > at) return uri;
  return uri.substr(0, colon + 1) + "***" + uri.substr(at);
}

namespace {

Result<NbdHandle> new_handle(const std::string& uri) {
  NbdHandle h(nbd_create());
  if (!h) return Error(nbd_errno_or(ENOMEM), "nbd_create: " + nbd_error_text());
  // libnbd would otherwise zero every read buffer before the server fills it.
  if (nbd_set_pread_initialize(h.get(), false) == -1 ||
      nbd_set_uri_allow_local_file(h.get(), true) == -1 ||
      nbd_set_handle_name(h.get(), "ublkd") == -1) {
    return Error(nbd_errno_or(EINVAL),
                 "nbd handle for " + nbd_shown_uri(uri) + ": " + nbd_error_text());
  }
  if (nbd_aio_connect_uri(h.get(), uri.c_str()) == -1)
    return Error(nbd_errno_or(ECONNREFUSED), nbd_error_text());
  return h;
}

short poll_events(unsigned dir) {
  short ev = 0;
  if (dir & LIBNBD_AIO_DIRECTION_READ) ev |= POLLIN;
  if (dir & LIBNBD_AIO_DIRECTION_WRITE) ev |= POLLOUT;
  return ev;
}

// Runs a handle's state machine with poll(2) until `done` or the deadline;
// for the connections made outside a queue's loop (open, attach, the last
// flush), where blocking the calling thread, bounded, is what is wanted.
template <typename Done>
Result<void> run_until(nbd_handle* h, Clock::time_point deadline, Done done) {
  for (;;) {
    if (done()) return {};
    if (nbd_aio_is_dead(h) == 1 || nbd_aio_is_closed(h) == 1)
      return Error(nbd_errno_or(ECONNRESET), nbd_error_text());
    const auto now = Clock::now();
    if (now >= deadline) return Error(ETIMEDOUT, "no answer");
    const auto left = std::chrono::ceil<milliseconds>(deadline - now);
    const unsigned dir = nbd_aio_get_direction(h);
    pollfd pfd{nbd_aio_get_fd(h), poll_events(dir), 0};
    const int n = ::poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (n < 0 && errno != EINTR) return Error(errno, "poll");
    if (n <= 0) continue;
    int r = 0;
    if ((pfd.revents & (POLLIN | POLLHUP | POLLERR)) && (dir & LIBNBD_AIO_DIRECTION_READ))
      r = nbd_aio_notify_read(h);
    else if ((pfd.revents & (POLLOUT | POLLHUP | POLLERR)) && (dir & LIBNBD_AIO_DIRECTION_WRITE))
      r = nbd_aio_notify_write(h);
    if (r == -1) return Error(nbd_errno_or(ECONNRESET), nbd_error_text());
  }
}

Result<NbdHandle> connect_blocking(const NbdBackendOptions& o) {
  const std::string shown = nbd_shown_uri(o.uri);
  auto h = new_handle(o.uri);
  if (!h) return h.error().wrap("connect to " + shown);
  nbd_handle* raw = h->get();
  const auto r = run_until(raw, Clock::now() + o.connect_timeout,
                           [raw] { return nbd_aio_is_ready(raw) == 1; });
  if (!r) {
    if (r.error().code() == ETIMEDOUT) {
      return Error(ETIMEDOUT, "connect to " + shown + ": no connection within " +
                                  std::to_string(o.connect_timeout.count()) +
                                  " ms (connect_timeout)");
    }
    return r.error().wrap("connect to " + shown);
  }
  return h;
}

// The largest request the server takes.
uint32_t max_request(const NbdExport& e) {
  return e.max_block != 0 ? e.max_block : kDefaultMaxBlock;
}

uint32_t block_size(nbd_handle* h, int which) {
  const int64_t v = nbd_get_block_size(h, which);
  return v > 0 && v <= UINT32_MAX ? static_cast<uint32_t>(v) : 0;
}

NbdExport read_export(nbd_handle* h) {
  NbdExport e;
  const int64_t size = nbd_get_size(h);
  e.size = size > 0 ? static_cast<uint64_t>(size) : 0;
  e.min_block = block_size(h, LIBNBD_SIZE_MINIMUM);
  e.preferred_block = block_size(h, LIBNBD_SIZE_PREFERRED);
  e.max_block = block_size(h, LIBNBD_SIZE_MAXIMUM);
  e.read_only = nbd_is_read_only(h) == 1;
  e.flush = nbd_can_flush(h) == 1;
  e.fua = nbd_can_fua(h) == 1;
  e.trim = nbd_can_trim(h) == 1;
  e.zero = nbd_can_zero(h) == 1;
  e.multi_conn = nbd_can_multi_conn(h) == 1;
  e.tls = nbd_get_tls_negotiated(h) == 1;
  e.structured_replies = nbd_get_structured_replies_negotiated(h) == 1;
  return e;
}

// What a new connection must agree on with the first for the device to
// stay the same device.
std::string mismatch(const NbdExport& want, const NbdExport& got) {
  if (got.size != want.size) {
    return "the export's size changed from " + std::to_string(want.size) + " to " +
           std::to_string(got.size) + " bytes";
  }
  if (got.read_only && !want.read_only) return "the export became read-only";
  if (got.min_block > std::max(want.min_block, 1u)) {
    return "the server's minimum block size grew to " + std::to_string(got.min_block);
  }
  return {};
}

}  // namespace

// One tag's request, as the queue holds it: sent on the current connection
// (on_wire), or waiting for a connection to be sent on.
struct NbdBackend::Slot {
  Queue* queue = nullptr;
  uint16_t tag = 0;
  IoRequest req{};
  bool held = false;
  bool on_wire = false;
  // Inside the nbd_aio_* call that sends it: a callback then only records.
  bool issuing = false;
  bool answered_early = false;
  int early_error = 0;
};

struct NbdBackend::Queue {
  enum class Link { kUp, kConnecting, kDown };
  NbdBackend* backend = nullptr;
  QueueContext* ctx = nullptr;
  NbdHandle h;
  Link link = Link::kDown;
  uint16_t gen = 0;
  bool pollin_armed = false;
  bool pollout_armed = false;
  bool tick_armed = false;
  bool detaching = false;
  // A reply kept a request for the next connection (a transport error):
  // this connection is given up even if its socket still looks alive.
  bool stranded = false;
  // The tag being submitted: not waiting in the worker's eyes yet, but not
  // abandoned either.
  int submitting = -1;
  Clock::time_point reconnect_until{};
  Clock::time_point connect_deadline{};
  Clock::time_point next_attempt{};
  milliseconds backoff = kFirstBackoff;
  __kernel_timespec tick_ts{};
  std::vector<Slot> slots;
};

NbdBackend::NbdBackend(NbdBackendOptions options, NbdHandle first, NbdExport info, uint64_t size)
    : options_(std::move(options)),
      shown_uri_(nbd_shown_uri(options_.uri)),
      export_(info),
      read_only_(options_.read_only || info.read_only),
      size_(size),
      first_(std::move(first)) {}

NbdBackend::~NbdBackend() = default;

Result<std::unique_ptr<NbdBackend>> NbdBackend::open(const NbdBackendOptions& o) {
  const std::string shown = nbd_shown_uri(o.uri);
  auto h = connect_blocking(o);
  if (!h) return h.error();
  const NbdExport e = read_export(h->get());
  const uint32_t lbs = o.logical_block_size;
  if (e.min_block > lbs) {
    return Error(EINVAL, "logical_block_size " + std::to_string(lbs) + " is smaller than the " +
                             "minimum block size " + std::to_string(e.min_block) +
                             " of the export at " + shown + "; set \"logical_block_size\": " +
                             std::to_string(std::max(e.min_block, 512u)));
  }
  const uint32_t max_block = max_request(e);
  if (max_block < lbs) {
    return Error(EINVAL, "logical_block_size " + std::to_string(lbs) +
                             " is larger than the maximum block size " + std::to_string(max_block) +
                             " of the export at " + shown);
  }
  const uint64_t size = e.size / lbs * lbs;
  if (size == 0) {
    return Error(EINVAL, "the export at " + shown + " (" + std::to_string(e.size) +
                             " bytes) is smaller than one logical block of " + std::to_string(lbs) +
                             " bytes");
  }
  return std::unique_ptr<NbdBackend>(new NbdBackend(o, std::move(h).value(), e, size));
}

BackendFeatures NbdBackend::features() const {
  BackendFeatures f;
  const bool ro = read_only_;
  f.read_only = export_.read_only;
  f.volatile_cache = export_.flush && !ro;
  f.fua = export_.fua && !ro;
  f.discard = export_.trim && !ro;
  f.write_zeroes = export_.zero && !ro;
  f.discard_granularity = std::max(options_.logical_block_size, export_.min_block);
  f.max_io_bytes = max_request(export_);
  // Without multi-conn a FLUSH on one connection need not cover writes
  // another connection completed: one connection, so one queue.
  f.max_queues = export_.multi_conn ? 0 : 1;
  return f;
}

std::string NbdBackend::io_notes() const {
  std::string s = "NBD " + shown_uri_ + (export_.tls ? " over TLS" : "");
  s += export_.multi_conn ? std::string(", one connection per queue")
                          : ", " + std::string(kOneQueueNote);
  return s;
}

std::optional<milliseconds> NbdBackend::request_timeout() const {
  if (options_.request_timeout.count() <= 0) return std::nullopt;
  return options_.request_timeout;
}

std::vector<BackendFact> NbdBackend::facts() const {
  std::vector<BackendFact> f = {
      {"export_size", export_.size},
      {"min_block_size", uint64_t{export_.min_block}},
      {"preferred_block_size", uint64_t{export_.preferred_block}},
      {"max_block_size", uint64_t{export_.max_block}},
      {"read_only", export_.read_only},
      {"flush", export_.flush},
      {"fua", export_.fua},
      {"trim", export_.trim},
      {"zero", export_.zero},
      {"multi_conn", export_.multi_conn},
      {"tls", export_.tls},
      {"structured_replies", export_.structured_replies},
      {"reconnects", reconnects()},
  };
  if (!export_.multi_conn) {
    f.push_back({"queues_note", std::string(kOneQueueNote)});
  }
  std::lock_guard lock(error_mu_);
  if (!last_error_.empty()) f.push_back({"last_connect_error", last_error_});
  return f;
}

void NbdBackend::note_error(std::string why) {
  std::lock_guard lock(error_mu_);
  last_error_ = std::move(why);
}

int NbdBackend::handle(const IoRequest&) noexcept {
  return -EOPNOTSUPP;
}

Result<void> NbdBackend::attach(QueueContext& ctx) {
  NbdHandle h;
  {
    std::lock_guard lock(first_mu_);
    if (ctx.queue_id() == 0 && first_) h = std::move(first_);
  }
  if (!h) {
    auto made = connect_blocking(options_);
    if (!made) return made.error().wrap("queue " + std::to_string(ctx.queue_id()));
    if (const std::string m = mismatch(export_, read_export(made->get())); !m.empty())
      return Error(EIO, "queue " + std::to_string(ctx.queue_id()) + ": " + shown_uri_ + ": " + m);
    h = std::move(made).value();
  }
  auto q = std::make_unique<Queue>();
  q->backend = this;
  q->ctx = &ctx;
  q->h = std::move(h);
  q->link = Queue::Link::kUp;
  q->slots.resize(ctx.depth());
  for (uint16_t t = 0; t < ctx.depth(); ++t) {
    q->slots[t].queue = q.get();
    q->slots[t].tag = t;
  }
  ctx.backend_data = q.release();
  update_polls(*static_cast<Queue*>(ctx.backend_data));
  return {};
}

void NbdBackend::detach(QueueContext& ctx) noexcept {
  std::unique_ptr<Queue> q(static_cast<Queue*>(ctx.backend_data));
  ctx.backend_data = nullptr;
  if (!q) return;
  q->detaching = true;
  if (q->link == Queue::Link::kUp) flush_before_close(*q);
  // The ring still holds this connection's polls; it is torn down next and
  // cancels them.
  q->h.reset();
}

void NbdBackend::flush_before_close(Queue& q) noexcept {
  if (!export_.flush || read_only_) return;
  nbd_handle* h = q.h.get();
  bool done = false;
  nbd_completion_callback cb{};
  cb.callback = [](void* d, int*) {
    *static_cast<bool*>(d) = true;
    return 1;
  };
  cb.user_data = &done;
  if (nbd_aio_flush(h, cb, 0) == -1) return;
  (void)run_until(h, Clock::now() + kStopFlushTimeout, [&done] { return done; });
  // Closed before `done` goes out of scope: after nbd_close no callback
  // runs.
  if (!done) q.h.reset();
}

// ---- requests ---------------------------------------------------------------

int NbdBackend::on_reply(void* user_data, int* error) {
  Slot& s = *static_cast<Slot*>(user_data);
  s.queue->backend->replied(s, *error);
  return 1;
}

namespace {

int ok_result(const IoRequest& r) {
  return r.op == IoOp::kRead || r.op == IoOp::kWrite ? static_cast<int>(r.length) : 0;
}

}  // namespace

void NbdBackend::replied(Slot& s, int error) noexcept {
  Queue& q = *s.queue;
  s.on_wire = false;
  if (s.issuing) {
    s.answered_early = true;
    s.early_error = error;
    return;
  }
  if (q.detaching) {
    s.held = false;
    return;
  }
  // Kept for the next connection; lose_connection() follows once libnbd
  // has returned (on_socket), whether or not the server closes this one.
  if (error != 0 && transport_error(error)) {
    q.stranded = true;
    return;
  }
  s.held = false;
  // Whatever the server said went wrong, the application sees EIO.
  q.ctx->finish(s.tag, error == 0 ? ok_result(s.req) : -EIO);
}

namespace {
// issue(): the command is on the wire, or must wait for a connection.
constexpr int kSent = 1;
constexpr int kHold = 2;
}  // namespace

// Sends the slot's request on the queue's connection. Returns kSent, kHold
// (the connection is broken; the request waits for the next one), or the
// request's final result.
int NbdBackend::issue(Queue& q, Slot& s) noexcept {
  nbd_handle* h = q.h.get();
  const IoRequest& r = s.req;
  nbd_completion_callback cb{};
  cb.callback = &NbdBackend::on_reply;
  cb.user_data = &s;
  s.issuing = true;
  s.answered_early = false;
  s.on_wire = true;
  int64_t cookie = -1;
  switch (r.op) {
    case IoOp::kRead:
      cookie = nbd_aio_pread(h, r.buffer, r.length, r.offset, cb, 0);
      break;
    case IoOp::kWrite:
      cookie =
          nbd_aio_pwrite(h, r.buffer, r.length, r.offset, cb,
                         (r.flags & uapi::kIoFlagFua) && export_.fua ? LIBNBD_CMD_FLAG_FUA : 0);
      break;
    case IoOp::kFlush:
      cookie = nbd_aio_flush(h, cb, 0);
      break;
    case IoOp::kDiscard:
      cookie = nbd_aio_trim(h, r.length, r.offset, cb, 0);
      break;
    case IoOp::kWriteZeroes:
      cookie = nbd_aio_zero(h, r.length, r.offset, cb,
                            (r.flags & uapi::kIoFlagNoUnmap) ? LIBNBD_CMD_FLAG_NO_HOLE : 0);
      break;
  }
  s.issuing = false;
  if (cookie == -1 || s.answered_early) {
    s.on_wire = false;
    const int err = cookie == -1 ? nbd_errno_or(EIO) : s.early_error;
    if (cookie != -1 && err == 0) return ok_result(r);
    const bool broken = nbd_aio_is_dead(h) == 1 || nbd_aio_is_closed(h) == 1;
    return broken || transport_error(err) ? kHold : -EIO;
  }
  return kSent;
}

int NbdBackend::submit(QueueContext& ctx, const IoRequest& req) noexcept {
  Queue& q = *static_cast<Queue*>(ctx.backend_data);
  const bool ro = read_only_;
  switch (req.op) {
    case IoOp::kRead:
      break;
    case IoOp::kWrite:
      if (ro) return -EROFS;
      break;
    case IoOp::kFlush:
      if (!export_.flush || ro) return 0;  // nothing is cached that a flush could drain
      break;
    case IoOp::kDiscard:
      if (ro) return -EROFS;
      if (!export_.trim) return -EOPNOTSUPP;
      break;
    case IoOp::kWriteZeroes:
      if (ro) return -EROFS;
      if (!export_.zero) return -EOPNOTSUPP;
      break;
  }
  if (req.op != IoOp::kFlush && (req.offset > size_ || req.length > size_ - req.offset))
    return -EIO;
  Slot& s = q.slots[req.tag];
  s.req = req;
  if (q.link == Queue::Link::kUp) {
    const int r = issue(q, s);
    if (r == kSent) {
      s.held = true;
      update_polls(q);
      return kIoQueued;
    }
    if (r != kHold) return r;
    s.held = true;
    q.submitting = req.tag;
    lose_connection(q);
    q.submitting = -1;
    // Sent again on the new connection already, or waiting for it.
    return s.held ? kIoQueued : -EIO;
  }
  if (Clock::now() < q.reconnect_until) {
    s.held = true;
    ctx.set_deadline(req.tag, q.reconnect_until);
    return kIoQueued;
  }
  return -EIO;  // reconnect_timeout has passed; the queue still tries
}

// ---- the connection ---------------------------------------------------------

void NbdBackend::update_polls(Queue& q) noexcept {
  if (!q.h) return;
  const int fd = nbd_aio_get_fd(q.h.get());
  if (fd < 0) return;
  const unsigned dir = nbd_aio_get_direction(q.h.get());
  if ((dir & LIBNBD_AIO_DIRECTION_READ) && !q.pollin_armed) {
    io_uring_sqe* sqe = q.ctx->get_sqe();
    io_uring_prep_poll_add(sqe, fd, POLLIN);
    sqe->user_data = QueueContext::event_user_data(cookie(kPollIn, q.gen));
    q.pollin_armed = true;
  }
  if ((dir & LIBNBD_AIO_DIRECTION_WRITE) && !q.pollout_armed) {
    io_uring_sqe* sqe = q.ctx->get_sqe();
    io_uring_prep_poll_add(sqe, fd, POLLOUT);
    sqe->user_data = QueueContext::event_user_data(cookie(kPollOut, q.gen));
    q.pollout_armed = true;
  }
}

void NbdBackend::arm_tick(Queue& q) noexcept {
  if (q.tick_armed) return;
  io_uring_sqe* sqe = q.ctx->get_sqe();
  q.tick_ts.tv_sec = 0;
  q.tick_ts.tv_nsec = std::chrono::duration_cast<std::chrono::nanoseconds>(kTickPeriod).count();
  io_uring_prep_timeout(sqe, &q.tick_ts, 0, 0);
  sqe->user_data = QueueContext::event_user_data(cookie(kTimer, 0));
  q.tick_armed = true;
}

void NbdBackend::on_event(QueueContext& ctx, const io_uring_cqe& cqe) noexcept {
  Queue& q = *static_cast<Queue*>(ctx.backend_data);
  const uint16_t c = QueueContext::cookie_of(cqe.user_data);
  switch (kind_of(c)) {
    case kCancel:
      return;
    case kTimer:
      q.tick_armed = false;
      return on_tick(q);
    case kPollIn:
    case kPollOut:
      if (gen_of(c) != q.gen) return;  // a connection dropped since
      (kind_of(c) == kPollIn ? q.pollin_armed : q.pollout_armed) = false;
      return on_socket(q, kind_of(c) == kPollIn);
  }
}

void NbdBackend::on_socket(Queue& q, bool readable) noexcept {
  nbd_handle* h = q.h.get();
  unsigned dir = nbd_aio_get_direction(h);
  int r = 0;
  if (readable && (dir & LIBNBD_AIO_DIRECTION_READ)) {
    // libnbd reads one reply per call: go on while the socket has more.
    // Never without data: a notify that finds none leaves libnbd waiting
    // for a reply, and the commands issued meanwhile unsent until one
    // comes, which with none in flight is never.
    const int fd = nbd_aio_get_fd(h);
    for (;;) {
      r = nbd_aio_notify_read(h);
      if (r == -1 || q.link != Queue::Link::kUp) break;
      int pending = 0;
      if (::ioctl(fd, FIONREAD, &pending) != 0 || pending <= 0) break;
      if (!(nbd_aio_get_direction(h) & LIBNBD_AIO_DIRECTION_READ)) break;
    }
  } else if (!readable && (dir & LIBNBD_AIO_DIRECTION_WRITE)) {
    r = nbd_aio_notify_write(h);
  }
  const bool broken = r == -1 || nbd_aio_is_dead(h) == 1 || nbd_aio_is_closed(h) == 1;
  if (q.link == Queue::Link::kUp) {
    if (broken || q.stranded) return lose_connection(q);
  } else if (q.link == Queue::Link::kConnecting) {
    if (broken) return attempt_failed(q, nbd_error_text());
    if (nbd_aio_is_ready(h) == 1) return connected(q);
  }
  update_polls(q);
}

void NbdBackend::drop_handle(Queue& q) noexcept {
  if (!q.h) return;
  // The polls hold the socket open until they complete, which for a
  // connect that is never answered is never. Cancelled by user_data: the
  // fd is closed before the cancel is submitted, and its number may be the
  // next connection's by then.
  const auto cancel = [&q](EventKind kind) {
    io_uring_sqe* sqe = q.ctx->get_sqe();
    io_uring_prep_cancel64(sqe, QueueContext::event_user_data(cookie(kind, q.gen)), 0);
    sqe->user_data = QueueContext::event_user_data(cookie(kCancel, 0));
  };
  if (q.pollin_armed) cancel(kPollIn);
  if (q.pollout_armed) cancel(kPollOut);
  q.pollin_armed = q.pollout_armed = false;
  q.stranded = false;
  q.gen = static_cast<uint16_t>((q.gen + 1) & kGenMask);
  // No callback runs from here on: commands still on it stay ours.
  q.h.reset();
  for (Slot& s : q.slots) s.on_wire = false;
}

// Requests the worker failed (their deadline, a stop) are over once no
// connection has them: finish() tells the worker the tag is free again.
void NbdBackend::release_abandoned(Queue& q) noexcept {
  for (Slot& s : q.slots) {
    if (!s.held || s.on_wire || s.tag == q.submitting || q.ctx->waiting(s.tag)) continue;
    s.held = false;
    q.ctx->finish(s.tag, -EIO);
  }
}

void NbdBackend::lose_connection(Queue& q) noexcept {
  drop_handle(q);
  q.link = Queue::Link::kDown;
  const auto now = Clock::now();
  q.reconnect_until = now + options_.reconnect_timeout;
  release_abandoned(q);
  for (Slot& s : q.slots) {
    if (s.held) q.ctx->set_deadline(s.tag, q.reconnect_until);
  }
  q.backoff = kFirstBackoff;
  start_attempt(q);
}

void NbdBackend::start_attempt(Queue& q) noexcept {
  auto h = new_handle(options_.uri);
  if (!h) return attempt_failed(q, h.error().message());
  q.h = std::move(h).value();
  q.link = Queue::Link::kConnecting;
  q.connect_deadline = Clock::now() + options_.connect_timeout;
  // A socket that is refused at once leaves nothing to poll.
  if (nbd_aio_is_dead(q.h.get()) == 1 || nbd_aio_is_closed(q.h.get()) == 1)
    return attempt_failed(q, nbd_error_text());
  update_polls(q);
  arm_tick(q);
}

void NbdBackend::attempt_failed(Queue& q, std::string why) noexcept {
  drop_handle(q);
  note_error("queue " + std::to_string(q.ctx->queue_id()) + ": reconnect to " + shown_uri_ + ": " +
             why);
  q.link = Queue::Link::kDown;
  q.next_attempt = Clock::now() + q.backoff;
  q.backoff = std::min(q.backoff * 2, kMaxBackoff);
  arm_tick(q);
}

void NbdBackend::connected(Queue& q) noexcept {
  if (const std::string m = mismatch(export_, read_export(q.h.get())); !m.empty())
    return attempt_failed(q, m);
  q.link = Queue::Link::kUp;
  reconnects_.fetch_add(1, std::memory_order_relaxed);
  release_abandoned(q);
  const auto deadline = options_.request_timeout.count() > 0
                            ? Clock::now() + options_.request_timeout
                            : Clock::time_point::max();
  for (Slot& s : q.slots) {
    if (!s.held || s.on_wire) continue;
    q.ctx->set_deadline(s.tag, deadline);
    const int r = issue(q, s);
    if (r == kSent) continue;
    if (r == kHold) return lose_connection(q);
    s.held = false;
    q.ctx->finish(s.tag, r);
  }
  update_polls(q);
}

void NbdBackend::on_tick(Queue& q) noexcept {
  if (q.link == Queue::Link::kUp) return;
  release_abandoned(q);
  const auto now = Clock::now();
  if (q.link == Queue::Link::kConnecting && now >= q.connect_deadline) {
    attempt_failed(q, "no connection within " + std::to_string(options_.connect_timeout.count()) +
                          " ms (connect_timeout)");
  } else if (q.link == Queue::Link::kDown && now >= q.next_attempt) {
    start_attempt(q);
  }
  if (q.link != Queue::Link::kUp) arm_tick(q);
}

}  // namespace ublkd
