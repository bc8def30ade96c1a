#include "backend/rbd_backend.h"

#include <poll.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <liburing.h>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "base/unique_fd.h"

namespace ublkd {

using std::chrono::milliseconds;

namespace {

// Ceph takes its timeouts in whole seconds.
std::string whole_seconds(milliseconds d) {
  return std::to_string(std::max<int64_t>(1, (d.count() + 999) / 1000));
}

std::string errno_text(int err) {
  return std::strerror(err);
}

}  // namespace

std::string rbd_image_spec(const RbdBackendOptions& o) {
  std::string s = o.pool + "/";
  if (!o.pool_namespace.empty()) s += o.pool_namespace + "/";
  return s + o.image;
}

// ---- the cluster connection ---------------------------------------------------

// One rados_t, shut down when the last device using it goes.
class RbdCluster {
 public:
  static Result<std::shared_ptr<RbdCluster>> get(const RbdBackendOptions& o);
  ~RbdCluster() { rados_shutdown(h_); }
  RbdCluster(const RbdCluster&) = delete;
  RbdCluster& operator=(const RbdCluster&) = delete;
  rados_t handle() const { return h_; }
  // What to call it in messages: "cluster ceph as client.admin".
  const std::string& name() const { return name_; }
  // The configuration's value of `option`, or "".
  std::string conf_get(const char* option) const;
  static long users(const RbdBackendOptions& o);

 private:
  RbdCluster(rados_t h, std::string name) : h_(h), name_(std::move(name)) {}
  static Result<std::shared_ptr<RbdCluster>> connect(const RbdBackendOptions& o,
                                                     const std::string& name);
  rados_t h_;
  std::string name_;
};

namespace {

// Devices with the same cluster, client, files and timeouts share one
// connection; each entry has its own mutex so that a cluster that does not
// answer holds up only the devices that name it.
struct ClusterEntry {
  std::mutex mu;
  std::weak_ptr<RbdCluster> cluster;
};
std::mutex clusters_mu;
std::map<std::string, std::shared_ptr<ClusterEntry>> clusters;

std::string cluster_key(const RbdBackendOptions& o) {
  const std::string sep(1, '\0');
  return o.cluster + sep + o.client_id + sep + o.conf + sep + o.keyring + sep +
         std::to_string(o.connect_timeout.count()) + sep + std::to_string(o.op_timeout.count());
}

std::shared_ptr<ClusterEntry> cluster_entry(const RbdBackendOptions& o) {
  std::lock_guard lock(clusters_mu);
  auto& e = clusters[cluster_key(o)];
  if (!e) e = std::make_shared<ClusterEntry>();
  return e;
}

// Why rados_connect failed, in an operator's words.
std::string connect_failure(int err, const RbdBackendOptions& o) {
  switch (err) {
    case ETIMEDOUT:
      return "no monitor answered within " + whole_seconds(o.connect_timeout) +
             " s (connect_timeout; is the cluster up, is mon_host right?)";
    case EACCES:
    case EPERM:
      return "the key of client." + o.client_id + " was refused";
    case ENOENT:
      return "no keyring or monitor address found (name them with conf and keyring)";
    default:
      return "connect to the monitors";
  }
}

}  // namespace

std::string RbdCluster::conf_get(const char* option) const {
  char buf[256] = {};
  if (rados_conf_get(h_, option, buf, sizeof buf - 1) < 0) return {};
  return buf;
}

Result<std::shared_ptr<RbdCluster>> RbdCluster::connect(const RbdBackendOptions& o,
                                                        const std::string& name) {
  rados_t h = nullptr;
  const std::string user = "client." + o.client_id;
  if (int r = rados_create2(&h, o.cluster.c_str(), user.c_str(), 0); r < 0)
    return Error(-r, name + ": rados_create2");
  std::shared_ptr<RbdCluster> c(new RbdCluster(h, name));
  if (int r = rados_conf_read_file(h, o.conf.empty() ? nullptr : o.conf.c_str()); r < 0) {
    return Error(-r, name + ": read the configuration " +
                         (o.conf.empty() ? std::string("(librados's default places)") : o.conf));
  }
  // Ceph's defaults wait 300 s for the monitors and for ever for an OSD.
  const std::string mount = whole_seconds(o.connect_timeout);
  const std::string op = whole_seconds(o.op_timeout);
  const std::pair<const char*, std::string> settings[] = {
      {"client_mount_timeout", mount},
      {"rados_mon_op_timeout", mount},
      {"rados_osd_op_timeout", op},
  };
  for (const auto& [key, value] : settings) {
    if (int r = rados_conf_set(h, key, value.c_str()); r < 0)
      return Error(-r, name + ": set " + key + " = " + value);
  }
  if (!o.keyring.empty()) {
    if (::access(o.keyring.c_str(), R_OK) != 0)
      return Error(errno, name + ": keyring " + o.keyring);
    if (int r = rados_conf_set(h, "keyring", o.keyring.c_str()); r < 0)
      return Error(-r, name + ": set keyring = " + o.keyring);
  }
  if (int r = rados_connect(h); r < 0) return Error(-r, name + ": " + connect_failure(-r, o));
  return c;
}

Result<std::shared_ptr<RbdCluster>> RbdCluster::get(const RbdBackendOptions& o) {
  const std::string name = "cluster " + o.cluster + " as client." + o.client_id;
  auto entry = cluster_entry(o);
  std::lock_guard lock(entry->mu);
  if (auto c = entry->cluster.lock()) return c;
  auto made = connect(o, name);
  if (!made) return made.error();
  entry->cluster = *made;
  return made;
}

long RbdCluster::users(const RbdBackendOptions& o) {
  auto entry = cluster_entry(o);
  std::lock_guard lock(entry->mu);
  return entry->cluster.use_count();
}

long RbdBackend::cluster_users(const RbdBackendOptions& options) {
  return RbdCluster::users(options);
}

// ---- the image ------------------------------------------------------------------

struct RbdImageHandle {
  rados_ioctx_t io = nullptr;
  rbd_image_t image = nullptr;
  RbdImageHandle() = default;
  RbdImageHandle(const RbdImageHandle&) = delete;
  RbdImageHandle& operator=(const RbdImageHandle&) = delete;
  // rbd_close waits for what is still in flight (bounded by op_timeout)
  // and gives up the lock.
  ~RbdImageHandle() {
    if (image != nullptr) rbd_close(image);
    if (io != nullptr) rados_ioctx_destroy(io);
  }
};

namespace {

std::string image_failure(int err, const RbdBackendOptions& o, const std::string& cluster) {
  switch (err) {
    case ENOENT:
      return "no such image in " + cluster + " (create it with `rbd create --size SIZE " +
             rbd_image_spec(o) + "`, or give \"create\": true and a size)";
    case EPERM:
    case EACCES:
      return "client." + o.client_id + " may not open it (its OSD caps)";
    case ETIMEDOUT:
      return "no answer from the OSDs within " + whole_seconds(o.op_timeout) + " s (op_timeout)";
    default:
      return "open";
  }
}

Result<void> create_image(rados_ioctx_t io, const RbdBackendOptions& o) {
  rbd_image_options_t opts;
  rbd_image_options_create(&opts);
  const int r = rbd_create4(io, o.image.c_str(), o.create_size, opts);
  rbd_image_options_destroy(opts);
  if (r < 0 && r != -EEXIST) return Error(-r, "create it");
  return {};
}

// The lock's holders (their addresses) that still watch the image: clients
// alive, as far as Ceph knows. A holder that died keeps its watch until the
// watch times out (osd_client_watch_timeout, 30 s by default).
std::vector<std::string> live_lock_owners(rbd_image_t image) {
  rbd_lock_mode_t mode;
  char* owners[8] = {};
  size_t n = 8;
  std::vector<std::string> live;
  if (rbd_lock_get_owners(image, &mode, owners, &n) < 0 || n == 0) return live;
  rbd_image_watcher_t watchers[64];
  size_t w = 64;
  const bool listed = rbd_watchers_list(image, watchers, &w) >= 0;
  for (size_t i = 0; i < n; ++i) {
    bool watching = !listed;  // unknown: count it as alive
    for (size_t j = 0; listed && j < w && !watching; ++j)
      watching = std::strcmp(watchers[j].addr, owners[i]) == 0;
    if (watching) live.emplace_back(owners[i]);
  }
  if (listed) rbd_watchers_list_cleanup(watchers, w);
  rbd_lock_get_owners_cleanup(owners, n);
  return live;
}

Error in_use(const std::vector<std::string>& owners) {
  if (owners.empty()) return Error(EBUSY, "the image is in use: another client holds its lock");
  std::string who;
  for (const auto& o : owners) who += (who.empty() ? "" : ", ") + o;
  return Error(EBUSY, "the image is in use: its exclusive lock is held by " + who +
                          ", a client that still watches it (another ublkd, rbd-nbd or krbd "
                          "mapping). A client that died lets go within about 30 s (its watch "
                          "timeout), or at once when blocklisted (`ceph osd blocklist add " +
                          owners.front() + "`)");
}

// librbd's acquire takes the lock from a live holder that gives it up when
// asked (krbd, rbd-nbd, librbd's automatic locking), waits out a dead
// holder's watch, and fails with EBUSY or EROFS against a holder that keeps
// it (another ublkd). Only the first is not what an operator wants.
Result<void> take_lock(rbd_image_t image, const RbdBackendOptions& o) {
  if (!o.take_over) {
    if (auto live = live_lock_owners(image); !live.empty()) return in_use(live);
  }
  const int r = rbd_lock_acquire(image, RBD_LOCK_MODE_EXCLUSIVE);
  if (r == 0) return {};
  if (r == -EINVAL) {
    return Error(EINVAL,
                 "the image has no exclusive-lock feature, which ublkd needs to keep "
                 "other clients out (`rbd feature enable " +
                     rbd_image_spec(o) + " exclusive-lock`)");
  }
  if (r == -EBUSY || r == -EROFS || r == -EAGAIN) {
    return in_use(live_lock_owners(image));
  }
  return Error(-r, "take the exclusive lock");
}

Result<std::unique_ptr<RbdImageHandle>> open_image(rados_t cluster, const RbdBackendOptions& o,
                                                   const std::string& cluster_name) {
  auto h = std::make_unique<RbdImageHandle>();
  if (int r = rados_ioctx_create(cluster, o.pool.c_str(), &h->io); r < 0) {
    return Error(-r, r == -ENOENT ? "no pool " + o.pool + " in " + cluster_name : "pool " + o.pool);
  }
  rados_ioctx_set_namespace(h->io, o.pool_namespace.empty() ? nullptr : o.pool_namespace.c_str());
  if (o.create_size != 0 && !o.read_only) {
    if (auto r = create_image(h->io, o); !r) return r.error();
  }
  const int r = o.read_only ? rbd_open_read_only(h->io, o.image.c_str(), &h->image, nullptr)
                            : rbd_open(h->io, o.image.c_str(), &h->image, nullptr);
  if (r < 0) {
    h->image = nullptr;
    return Error(-r, image_failure(-r, o, cluster_name));
  }
  if (!o.read_only) {
    if (auto l = take_lock(h->image, o); !l) return l.error();
  }
  return h;
}

}  // namespace

// ---- the backend ----------------------------------------------------------------

RbdBackend::RbdBackend(RbdBackendOptions options, std::shared_ptr<RbdCluster> cluster,
                       std::unique_ptr<RbdImageHandle> image, uint64_t size, bool cache)
    : options_(std::move(options)),
      spec_(rbd_image_spec(options_)),
      cluster_(std::move(cluster)),
      image_(std::move(image)),
      size_(size),
      cache_(cache) {}

RbdBackend::~RbdBackend() {
  // No update callback runs once unwatch returns.
  if (watch_handle_) rbd_update_unwatch(image_->image, *watch_handle_);
  // The image before the connection it was opened on.
  image_.reset();
  cluster_.reset();
}

Result<std::unique_ptr<RbdBackend>> RbdBackend::open(const RbdBackendOptions& o) {
  const std::string what = "rbd image " + rbd_image_spec(o);
  auto cluster = RbdCluster::get(o);
  if (!cluster) return cluster.error().wrap(what);
  auto image = open_image((*cluster)->handle(), o, (*cluster)->name());
  if (!image) return image.error().wrap(what);
  uint64_t bytes = 0;
  if (int r = rbd_get_size((*image)->image, &bytes); r < 0)
    return Error(-r, what + ": read its size");
  const uint32_t lbs = o.logical_block_size;
  const uint64_t size = bytes / lbs * lbs;
  if (size == 0) {
    return Error(EINVAL, what + " (" + std::to_string(bytes) +
                             " bytes) is smaller than one logical block of " + std::to_string(lbs) +
                             " bytes");
  }
  const bool cache = (*cluster)->conf_get("rbd_cache") == "true";
  return std::unique_ptr<RbdBackend>(
      new RbdBackend(o, std::move(cluster).value(), std::move(image).value(), size, cache));
}

BackendFeatures RbdBackend::features() const {
  BackendFeatures f;
  const bool ro = options_.read_only;
  f.read_only = ro;
  // A flush drains librbd's cache; without one, each write is on the OSDs
  // when it completes and the kernel need send no FLUSH.
  f.volatile_cache = cache_ && !ro;
  f.discard = !ro;
  f.write_zeroes = !ro;
  return f;
}

std::string RbdBackend::io_notes() const {
  return "RBD " + spec_ + " (" + cluster_->name() + (cache_ ? ", librbd cache on" : "") + ")";
}

std::optional<milliseconds> RbdBackend::request_timeout() const {
  // librbd fails an operation after op_timeout itself; this is the
  // backstop should it not.
  return options_.op_timeout + milliseconds(5'000);
}

std::vector<BackendFact> RbdBackend::facts() const {
  std::vector<BackendFact> f = {
      {"image_size", size()},
      {"exclusive_lock", !options_.read_only},
      {"librbd_cache", cache_},
      {"errors", errors_.load(std::memory_order_relaxed)},
  };
  std::lock_guard lock(error_mu_);
  if (!last_error_.empty()) f.push_back({"last_error", last_error_});
  return f;
}

void RbdBackend::note_error(std::string why) {
  errors_.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard lock(error_mu_);
  last_error_ = std::move(why);
}

int RbdBackend::handle(const IoRequest&) noexcept {
  return -EOPNOTSUPP;
}

void RbdBackend::watch_size(std::function<void()> changed) {
  if (watch_handle_) return;
  size_changed_ = std::move(changed);
  uint64_t handle = 0;
  // Without the watch the device keeps the size it opened with: a resize
  // of the image then needs the device re-added, which is what an image
  // served by a kernel without UPDATE_SIZE needs anyway.
  if (rbd_update_watch(image_->image, &handle, &RbdBackend::image_updated, this) == 0)
    watch_handle_ = handle;
}

// On a librbd thread, after any change of the image's header (a resize,
// a snapshot, a feature): only a new size matters here.
void RbdBackend::image_updated(void* self) noexcept {
  auto& b = *static_cast<RbdBackend*>(self);
  uint64_t bytes = 0;
  if (rbd_get_size(b.image_->image, &bytes) < 0) return;
  const uint32_t lbs = b.options_.logical_block_size;
  const uint64_t size = bytes / lbs * lbs;
  if (size == 0 || b.size_.exchange(size, std::memory_order_acq_rel) == size) return;
  if (b.size_changed_) b.size_changed_();
}

Result<void> RbdBackend::sync() {
  if (options_.read_only) return {};
  if (int r = rbd_flush(image_->image); r < 0) return Error(-r, "rbd image " + spec_ + ": flush");
  return {};
}

// ---- a queue ---------------------------------------------------------------------

// What a queue shares with librbd's threads. It lives as long as the
// longest of the queue and the operations still in flight, so that a
// completion arriving after the queue stopped finds it.
struct RbdBackend::Inbox {
  struct Op {
    // The operation's hold on the inbox, given up by its completion.
    std::shared_ptr<Inbox> keep;
    uint16_t tag = 0;
  };
  struct Done {
    uint16_t tag;
    int result;  // librbd's: bytes or 0, or -errno
  };
  std::mutex mu;
  std::vector<Done> done;
  UniqueFd efd;
  std::vector<Op> ops;  // per tag

  static void completed(rbd_completion_t c, void* arg) noexcept;
};

struct RbdBackend::Queue {
  QueueContext* ctx = nullptr;
  std::shared_ptr<Inbox> inbox;
  std::vector<Inbox::Done> batch;
  std::vector<IoRequest> reqs;  // per tag: what it asked, for the result
  bool armed = false;
};

void RbdBackend::Inbox::completed(rbd_completion_t c, void* arg) noexcept {
  Op& op = *static_cast<Op*>(arg);
  std::shared_ptr<Inbox> self = std::move(op.keep);
  const int result = static_cast<int>(rbd_aio_get_return_value(c));
  const uint16_t tag = op.tag;
  rbd_aio_release(c);
  bool wake = false;
  {
    std::lock_guard lock(self->mu);
    wake = self->done.empty();
    // Never past the queue depth, which attach() reserved: no allocation.
    self->done.push_back({tag, result});
  }
  // One wake-up per batch: the queue reads the eventfd before it takes
  // the list, so a completion after that read finds the list empty again.
  if (wake) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(self->efd.get(), &one, sizeof one);
  }
}

namespace {
constexpr uint16_t kInboxCookie = 1;
}  // namespace

Result<void> RbdBackend::attach(QueueContext& ctx) {
  auto inbox = std::make_shared<Inbox>();
  inbox->efd = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!inbox->efd) return Error(errno, "queue " + std::to_string(ctx.queue_id()) + ": eventfd");
  inbox->done.reserve(ctx.depth());
  inbox->ops.resize(ctx.depth());
  auto q = std::make_unique<Queue>();
  q->ctx = &ctx;
  q->inbox = std::move(inbox);
  q->batch.reserve(ctx.depth());
  q->reqs.resize(ctx.depth());
  ctx.backend_data = q.release();
  arm_poll(*static_cast<Queue*>(ctx.backend_data));
  return {};
}

void RbdBackend::detach(QueueContext& ctx) noexcept {
  // Operations still in flight keep the inbox; the ring, torn down next,
  // cancels the poll on its eventfd.
  std::unique_ptr<Queue> q(static_cast<Queue*>(ctx.backend_data));
  ctx.backend_data = nullptr;
}

void RbdBackend::arm_poll(Queue& q) noexcept {
  if (q.armed) return;
  io_uring_sqe* sqe = q.ctx->get_sqe();
  io_uring_prep_poll_add(sqe, q.inbox->efd.get(), POLLIN);
  sqe->user_data = QueueContext::event_user_data(kInboxCookie);
  q.armed = true;
}

namespace {

int ok_result(const IoRequest& r) {
  return r.op == IoOp::kRead || r.op == IoOp::kWrite ? static_cast<int>(r.length) : 0;
}

const char* op_name(IoOp op) {
  switch (op) {
    case IoOp::kRead:
      return "read";
    case IoOp::kWrite:
      return "write";
    case IoOp::kFlush:
      return "flush";
    case IoOp::kDiscard:
      return "discard";
    case IoOp::kWriteZeroes:
      return "write-zeroes";
  }
  return "request";
}

// What failed, for last_error. A flush covers the whole image: the block
// layer gives it sector -1 and no length, which mean nothing to a reader.
std::string describe(const IoRequest& r) {
  if (r.op == IoOp::kFlush) return op_name(r.op);
  return std::string(op_name(r.op)) + " of " + std::to_string(r.length) + " bytes at " +
         std::to_string(r.offset);
}

}  // namespace

void RbdBackend::drain(Queue& q) noexcept {
  uint64_t count = 0;
  [[maybe_unused]] ssize_t n = ::read(q.inbox->efd.get(), &count, sizeof count);
  {
    std::lock_guard lock(q.inbox->mu);
    q.batch.swap(q.inbox->done);
  }
  for (const Inbox::Done& d : q.batch) {
    const IoRequest& r = q.reqs[d.tag];
    if (d.result < 0) note_error(describe(r) + ": " + errno_text(-d.result));
    // Whatever Ceph said went wrong, the application sees EIO.
    q.ctx->finish(d.tag, d.result < 0 ? -EIO : ok_result(r));
  }
  q.batch.clear();
}

void RbdBackend::on_event(QueueContext& ctx, const io_uring_cqe& cqe) noexcept {
  Queue& q = *static_cast<Queue*>(ctx.backend_data);
  if (QueueContext::cookie_of(cqe.user_data) != kInboxCookie) return;
  q.armed = false;
  drain(q);
  arm_poll(q);
}

int RbdBackend::start(Queue& q, const IoRequest& r) noexcept {
  Inbox::Op& op = q.inbox->ops[r.tag];
  op.tag = r.tag;
  rbd_completion_t c = nullptr;
  if (int e = rbd_aio_create_completion(&op, &Inbox::completed, &c); e < 0) return e;
  op.keep = q.inbox;
  rbd_image_t image = image_->image;
  int e = 0;
  switch (r.op) {
    case IoOp::kRead:
      e = rbd_aio_read(image, r.offset, r.length, static_cast<char*>(r.buffer), c);
      break;
    case IoOp::kWrite:
      e = rbd_aio_write(image, r.offset, r.length, static_cast<const char*>(r.buffer), c);
      break;
    case IoOp::kFlush:
      e = rbd_aio_flush(image, c);
      break;
    case IoOp::kDiscard:
      e = rbd_aio_discard(image, r.offset, r.length, c);
      break;
    case IoOp::kWriteZeroes:
      e = rbd_aio_write_zeroes(image, r.offset, r.length, c, 0, 0);
      break;
  }
  if (e < 0) {
    // Not started: no callback comes.
    op.keep.reset();
    rbd_aio_release(c);
    return e;
  }
  return 0;
}

int RbdBackend::submit(QueueContext& ctx, const IoRequest& req) noexcept {
  Queue& q = *static_cast<Queue*>(ctx.backend_data);
  if (options_.read_only && req.op != IoOp::kRead && req.op != IoOp::kFlush) return -EROFS;
  if (req.op == IoOp::kFlush && !cache_) return 0;
  const uint64_t size = this->size();
  if (req.op != IoOp::kFlush && (req.offset > size || req.length > size - req.offset)) return -EIO;
  q.reqs[req.tag] = req;
  if (int e = start(q, req); e < 0) {
    note_error(std::string(op_name(req.op)) + ": not started: " + errno_text(-e));
    return -EIO;
  }
  return kIoQueued;
}

}  // namespace ublkd
