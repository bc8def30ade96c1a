// A device served by a Ceph RBD image through librbd's asynchronous API.
//
// One cluster connection (rados_t) per cluster and client, shared by every
// device that names them; one image handle per device, shared by its
// queues. librbd completes requests on its own threads: each completion is
// handed to its queue thread through that queue's inbox (a short list under
// a mutex and an eventfd the queue's ring polls), and the queue thread ends
// the request (QueueContext::finish). Nothing else is shared on the I/O
// path.
//
// Bounded: the connect (connect_timeout: monitors, then the image's open
// and lock) and every operation (op_timeout, which librbd enforces and
// reports as ETIMEDOUT; Ceph's own default is to wait for ever).
//
// Exclusive: a writable device holds the image's exclusive lock for its
// whole life, so a second ublkd, rbd-nbd or krbd mapping of the same image
// is refused rather than interleaving writes with this one; and a device is
// not added on an image another live client writes (librbd would take the
// lock from such a client, which gives it up when asked).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "backend/backend.h"
#include "base/error.h"

namespace ublkd {

struct RbdBackendOptions {
  // ceph.conf; empty: librados's own search ($CEPH_CONF, /etc/ceph/...).
  std::string conf;
  std::string cluster = "ceph";
  // The cephx user, without "client.".
  std::string client_id = "admin";
  // A keyring file; empty: the one the configuration names.
  std::string keyring;
  std::string pool = "rbd";
  std::string pool_namespace;
  std::string image;
  // Create the image with this size (bytes) when it does not exist; 0:
  // open an existing image only.
  uint64_t create_size = 0;
  // Reaching the monitors, and then opening and locking the image.
  std::chrono::milliseconds connect_timeout{30'000};
  // Any one operation on the OSDs (Ceph's rados_osd_op_timeout).
  std::chrono::milliseconds op_timeout{30'000};
  uint32_t logical_block_size = 512;
  // Opened read-only: no lock is taken, writes are refused.
  bool read_only = false;
  // The lock was this device's own, held by a process that died (a
  // recovery): wait for Ceph to let go of it instead of refusing.
  bool take_over = false;
};

// "POOL/IMAGE" or "POOL/NAMESPACE/IMAGE", as the rbd tool spells an image.
std::string rbd_image_spec(const RbdBackendOptions& o);

class RbdCluster;
struct RbdImageHandle;

class RbdBackend final : public Backend {
 public:
  // Connects (or joins the cluster connection already made for the same
  // cluster and client), opens the image and takes its lock. Errors name
  // the image and the cluster, and say what failed.
  static Result<std::unique_ptr<RbdBackend>> open(const RbdBackendOptions& options);

  ~RbdBackend() override;
  RbdBackend(const RbdBackend&) = delete;
  RbdBackend& operator=(const RbdBackend&) = delete;

  std::string_view type() const override { return "rbd"; }
  // Follows the image when the cluster resizes it (watch_size).
  uint64_t size() const override { return size_.load(std::memory_order_acquire); }
  BackendFeatures features() const override;
  std::string io_notes() const override;
  std::vector<BackendFact> facts() const override;
  std::optional<std::chrono::milliseconds> request_timeout() const override;

  // Requests need a queue's inbox: only submit() serves them.
  int handle(const IoRequest& req) noexcept override;
  Result<void> attach(QueueContext& q) override;
  void detach(QueueContext& q) noexcept override;
  int submit(QueueContext& q, const IoRequest& req) noexcept override;
  void on_event(QueueContext& q, const io_uring_cqe& cqe) noexcept override;
  Result<void> sync() override;
  void watch_size(std::function<void()> changed) override;
  // The image's size is the cluster's to change (rbd resize); the device
  // follows it where the kernel allows.
  Result<void> check_resize(uint64_t /*bytes*/, bool /*force*/) const override {
    return Error(EOPNOTSUPP,
                 "an rbd device has its image's size: resize the image (rbd resize) and the "
                 "device follows it");
  }

  // Devices of this process that share the connection of `options`'s
  // cluster and client (for tests and `info`).
  static long cluster_users(const RbdBackendOptions& options);

 private:
  struct Inbox;
  struct Queue;

  RbdBackend(RbdBackendOptions options, std::shared_ptr<RbdCluster> cluster,
             std::unique_ptr<RbdImageHandle> image, uint64_t size, bool cache);

  void arm_poll(Queue& q) noexcept;
  void drain(Queue& q) noexcept;
  int start(Queue& q, const IoRequest& req) noexcept;
  void note_error(std::string why);
  static void image_updated(void* self) noexcept;

  const RbdBackendOptions options_;
  const std::string spec_;
  std::shared_ptr<RbdCluster> cluster_;
  std::unique_ptr<RbdImageHandle> image_;
  std::atomic<uint64_t> size_;
  std::function<void()> size_changed_;
  std::optional<uint64_t> watch_handle_;
  // librbd's cache is on: writes may sit in this process until a flush.
  const bool cache_;
  std::atomic<uint64_t> errors_{0};
  mutable std::mutex error_mu_;
  std::string last_error_;
};

}  // namespace ublkd
