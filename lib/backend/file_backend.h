// A device backed by a regular file (a disk image) or by a block device.
// Requests are served on the queue's own io_uring: a READ / WRITE becomes one
// SQE on the backing fd (more if the kernel returns a short transfer), so a
// queue keeps as many requests in flight on the storage as the kernel hands
// it, without extra threads.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "backend/backend.h"
#include "backend/chunked_memory.h"
#include "base/error.h"
#include "base/unique_fd.h"

namespace ublkd {

struct FileBackendOptions {
  std::string path;
  // Device size in bytes. 0 = the size of the file, or of the block device.
  // Given for an existing regular file it must equal the file's size: a
  // user's image is never truncated or extended behind their back.
  uint64_t size = 0;
  // Create the file (sparse, mode 0600) at `size` if it does not exist. An
  // existing file is used as it is.
  bool create = false;
  // O_DIRECT: the device's data bypasses the page cache, where it would
  // otherwise be cached a second time (once above the ublk device, once
  // here). The file system must support it at logical_block_size alignment.
  bool direct_io = true;
  bool read_only = false;
  // The block size the device advertises; every request is aligned to it.
  uint32_t logical_block_size = 512;
  // Serve a file in memory (tmpfs, ramfs) inline; see serves_inline() and
  // user_copy(), which it also turns off. Tests turn it off to
  // drive the io_uring path on tmpfs.
  bool inline_in_memory = true;
  // A writable regular file longer than a nonzero `size` is cut to it
  // instead of refused: a recovery after a live resize that a crash cut
  // short (the daemon's record of the size is the device's; see
  // Device::change_size).
  bool finish_resize = false;
};

class FileBackend final : public Backend {
 public:
  // Opens (and with `create`, creates) the file, checks it against the
  // options and takes a lock on it: exclusive, or shared for read_only, so
  // that two devices or daemons never write the same file. A writable block
  // device is also opened O_EXCL, which fails while it is mounted or held by
  // another driver. Errors name the path and the offending value.
  static Result<std::unique_ptr<FileBackend>> open(const FileBackendOptions& options);

  ~FileBackend() override;
  FileBackend(const FileBackend&) = delete;
  FileBackend& operator=(const FileBackend&) = delete;

  std::string_view type() const override { return "file"; }
  uint64_t size() const override { return size_.load(std::memory_order_acquire); }
  BackendFeatures features() const override;
  std::string io_notes() const override;
  // Whenever the requests go through io_uring (not served inline).
  bool zero_copy() const override { return !inline_; }
  // A file on tmpfs: its pages are mapped, and the kernel copies between
  // them and the requests' pages (ChunkedMemory), one copy where the inline
  // pread / pwrite and the kernel's copy into a tag buffer were two.
  bool user_copy() const override { return memory_ != nullptr; }

  // The synchronous path (pread / pwrite / fdatasync / fallocate), with the
  // same results as submit() + complete(). It blocks the calling thread for
  // the duration of the I/O.
  int handle(const IoRequest& req) noexcept override;

  int attach_fd() const override { return fd_.get(); }
  Result<void> attach(QueueContext& q) override;
  void detach(QueueContext& q) noexcept override;
  Result<void> sync() override;
  // A regular file, writable: ftruncate to the new size. A block device's
  // size is its own.
  Result<void> check_resize(uint64_t bytes, bool force) const override;
  Result<void> resize(uint64_t bytes) override;
  int submit(QueueContext& q, const IoRequest& req) noexcept override;
  int complete(QueueContext& q, const io_uring_cqe& cqe) noexcept override;

  const std::string& path() const { return path_; }
  bool is_block_device() const { return block_device_; }
  bool direct_io() const { return direct_io_; }
  bool read_only() const { return read_only_; }
  uint32_t logical_block_size() const { return logical_block_size_; }
  // The file lives in memory (tmpfs, ramfs): submit() then serves requests
  // inline, as handle() does, since a hand-off to io_uring's worker threads
  // costs more than the memory copy.
  bool serves_inline() const { return inline_; }

  // Writes of zeros (when fallocate cannot zero a range) are issued from a
  // shared zero buffer in pieces of at most this many bytes.
  static constexpr uint32_t kZeroChunk = 1024 * 1024;

 private:
  struct Tag;
  struct QueueState;

  FileBackend(UniqueFd fd, std::string path, uint64_t size, bool block_device, bool direct_io,
              bool read_only, uint32_t logical_block_size, const std::byte* zeros,
              bool serve_inline, std::unique_ptr<ChunkedMemory> memory);

  int check(const IoRequest& req) const noexcept;
  bool fallocate_unsupported(IoOp op) const noexcept;
  void mark_fallocate_unsupported(IoOp op) noexcept;

  // Asynchronous steps; each returns kIoQueued or a final result.
  int queue_rw(QueueContext& q, Tag& t, uint16_t tag) noexcept;
  int queue_fallocate(QueueContext& q, Tag& t, uint16_t tag) noexcept;
  int queue_zero_write(QueueContext& q, Tag& t, uint16_t tag) noexcept;

  // Synchronous helpers for handle().
  int sync_rw(const IoRequest& req) noexcept;
  int sync_zero(const IoRequest& req) noexcept;
  int sync_zero_write(uint64_t offset, uint64_t length) noexcept;
  // Sets the file's mtime to now; 0 or -1 with errno.
  int touch() noexcept;

  UniqueFd fd_;
  std::string path_;
  std::atomic<uint64_t> size_;
  bool block_device_;
  bool direct_io_;
  bool read_only_;
  uint32_t logical_block_size_;
  const std::byte* zeros_;  // kZeroChunk bytes, page aligned; nullptr if read_only
  bool inline_;
  // A file on tmpfs, mapped: every READ, WRITE, DISCARD and WRITE_ZEROES
  // goes through it, so that its chunk bitmap sees every write. Null
  // otherwise.
  std::unique_ptr<ChunkedMemory> memory_;
  // Set once fallocate has answered EOPNOTSUPP for a mode, so that later
  // requests go straight to writing zeros. Shared by all queues; a stale
  // read only costs one more refused fallocate.
  std::atomic<bool> no_punch_hole_{false};
  std::atomic<bool> no_zero_range_{false};
};

}  // namespace ublkd
