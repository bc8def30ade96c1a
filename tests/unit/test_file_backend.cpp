#include "backend/file_backend.h"
#include "skip.h"

#include <fcntl.h>
#include <liburing.h>
#include <linux/falloc.h>
#include <linux/loop.h>
#include <linux/magic.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "base/unique_fd.h"
#include "copy_fd.h"
#include "temp_dir.h"
#include "uapi/ublk.h"

using ublkd::FileBackend;
using ublkd::FileBackendOptions;
using ublkd::IoOp;
using ublkd::IoRequest;
using ublkd::kIoQueued;
using ublkd::QueueContext;
using ublkd::UniqueFd;

using ublkd::test::CopyFd;
using ublkd::test::TempDir;

namespace {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint32_t kFua = ublkd::uapi::kIoFlagFua;

// ---- files and buffers ------------------------------------------------------

// Page aligned, as the queue worker's tag buffers are, so O_DIRECT takes it.
class Buffer {
 public:
  explicit Buffer(size_t size, uint8_t fill = 0xA5)
      : size_(size), p_(static_cast<uint8_t*>(std::aligned_alloc(4096, round_up(size)))) {
    REQUIRE(p_ != nullptr);
    std::memset(p_.get(), fill, size);
  }
  uint8_t* data() { return p_.get(); }
  size_t size() const { return size_; }
  std::vector<uint8_t> bytes() const { return {p_.get(), p_.get() + size_}; }

 private:
  static size_t round_up(size_t n) { return n == 0 ? 4096 : (n + 4095) / 4096 * 4096; }
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  size_t size_;
  std::unique_ptr<uint8_t, Free> p_;
};

// Never zero, and different for every byte position and seed, so that
// misplaced, stale and missing data are all told apart.
uint8_t pattern(uint64_t pos, uint32_t seed) {
  uint64_t x = (pos + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t{seed} << 32 | seed);
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 32;
  return static_cast<uint8_t>(1 + x % 255);
}

void fill_pattern(Buffer& b, uint64_t offset, uint32_t seed) {
  for (size_t i = 0; i < b.size(); ++i) b.data()[i] = pattern(offset + i, seed);
}

// Offset of the first byte that is not the pattern, or -1.
int64_t pattern_mismatch(const std::vector<uint8_t>& v, uint64_t offset, uint32_t seed) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] != pattern(offset + i, seed)) return static_cast<int64_t>(i);
  }
  return -1;
}

int64_t first_nonzero(const std::vector<uint8_t>& v) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] != 0) return static_cast<int64_t>(i);
  }
  return -1;
}

// The file's contents read past the backend, through a separate fd.
std::vector<uint8_t> read_file(const std::string& path, uint64_t offset, uint64_t length) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(fd);
  std::vector<uint8_t> v(length);
  REQUIRE(::pread(fd.get(), v.data(), length, static_cast<off_t>(offset)) ==
          static_cast<ssize_t>(length));
  return v;
}

uint64_t allocated_bytes(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

uint64_t file_size(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return static_cast<uint64_t>(st.st_size);
}

void make_file(const std::string& path, uint64_t size) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  REQUIRE(fd);
  REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(size)) == 0);
}

FileBackendOptions options(const std::string& path, uint64_t size, bool direct_io,
                           bool create = true) {
  FileBackendOptions o;
  o.path = path;
  o.size = size;
  o.create = create;
  o.direct_io = direct_io;
  return o;
}

std::unique_ptr<FileBackend> open_ok(const FileBackendOptions& o) {
  auto r = FileBackend::open(o);
  if (!r) FAIL("open " << o.path << ": " << r.error().to_string());
  return std::move(r).value();
}

ublkd::Error open_error(const FileBackendOptions& o) {
  auto r = FileBackend::open(o);
  REQUIRE_FALSE(r.ok());
  return r.error();
}

// Whether the file system of `dir` takes O_DIRECT. If it does not, the
// refusal has to tell the operator how to go on, and the file that open()
// created for the attempt must be gone again.
bool direct_io_works(const TempDir& dir) {
  const auto o = options(dir.file("direct-probe.img"), kMiB, true);
  auto r = FileBackend::open(o);
  if (r) return true;
  INFO(r.error().to_string());
  REQUIRE(r.error().code() == EINVAL);
  REQUIRE_THAT(r.error().message(), Catch::Contains("direct_io") && Catch::Contains(o.path));
  REQUIRE_FALSE(std::filesystem::exists(o.path));
  ublkd::test::record_partial_skip(dir.path().string() +
                                   " refuses O_DIRECT; direct_io=true not exercised");
  return false;
}

// ---- a queue ring for the asynchronous path ----------------------------------

struct SqeRecord {
  uint8_t opcode;
  uint16_t tag;
  uint32_t len;
  uint64_t off;
  uint32_t op_flags;   // rw_flags / fsync_flags (the same union in the SQE)
  uint64_t addr = 0;   // READ_FIXED / WRITE_FIXED: the offset into the buffer
  int buf_index = -1;  // READ_FIXED / WRITE_FIXED: the fixed buffer
};

// What the queue worker lends a backend, on a real io_uring: fixed file 0 is
// a stand-in for the ublk char device and 1 the backend's fd. Every SQE the
// backend queues is checked against the worker's rules (fixed file, backend
// user_data for the right tag, at most one SQE per tag in flight) before it
// is submitted; READ / WRITE SQEs can be shortened to simulate the short
// transfers a kernel may return.
class TestQueue final : public QueueContext {
 public:
  static constexpr uint16_t kDepth = 8;

  explicit TestQueue(int backend_fd, int file_index = 1) : file_index_(file_index) {
    REQUIRE(io_uring_queue_init(2u * kDepth + 1u, &ring_, 0) == 0);
    initialised_ = true;
    dummy_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    REQUIRE(dummy_);
    const int files[2] = {dummy_.get(), backend_fd};
    REQUIRE(io_uring_register_files(&ring_, files, 2) == 0);
  }
  ~TestQueue() override {
    if (initialised_) io_uring_queue_exit(&ring_);
  }

  uint16_t queue_id() const override { return 0; }
  uint16_t depth() const override { return kDepth; }
  int backend_file_index() const override { return file_index_; }
  // The file backend answers through complete() only.
  void finish(uint16_t tag, int result) override {
    FAIL("finish(" << tag << ", " << result << ") from the file backend");
  }
  bool waiting(uint16_t) const override { return true; }
  void set_deadline(uint16_t tag, std::chrono::steady_clock::time_point) override {
    FAIL("set_deadline(" << tag << ") from the file backend");
  }
  io_uring_sqe* get_sqe() override {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return nullptr;
    std::memset(sqe, 0, sizeof(*sqe));
    handed_.push_back(sqe);
    return sqe;
  }

  // Halve this many of the following READ / WRITE SQEs (to a multiple of
  // `align`, never to 0).
  void shorten_next(int count, uint32_t align) {
    shorten_ = count;
    shorten_align_ = align;
  }

  const std::vector<SqeRecord>& log() const { return log_; }
  void clear_log() { log_.clear(); }
  size_t count(uint8_t opcode) const {
    size_t n = 0;
    for (const auto& r : log_) n += r.opcode == opcode;
    return n;
  }

  // Registers `buf` as fixed buffer `index`, the way automatic buffer
  // registration lends a request's pages: the backend addresses it from 0,
  // and flush() turns those offsets into the buffer's real addresses.
  void lend_buffer(uint16_t index, Buffer& buf) {
    lent_.resize(std::max<size_t>(lent_.size(), index + 1u));
    lent_[index] = iovec{buf.data(), buf.size()};
    io_uring_unregister_buffers(&ring_);
    REQUIRE(io_uring_register_buffers(&ring_, lent_.data(), static_cast<unsigned>(lent_.size())) ==
            0);
  }

  // Checks and submits what the backend queued since the last call.
  void flush() {
    for (io_uring_sqe* sqe : handed_) {
      INFO("SQE opcode " << int{sqe->opcode} << " user_data " << sqe->user_data);
      REQUIRE((sqe->flags & IOSQE_FIXED_FILE) != 0);
      REQUIRE(sqe->fd == file_index_);
      REQUIRE((sqe->user_data & kBackendBit) != 0);
      const uint16_t tag = tag_of(sqe->user_data);
      REQUIRE(tag < kDepth);
      REQUIRE(++in_flight_[tag] == 1);
      const bool fixed =
          sqe->opcode == IORING_OP_READ_FIXED || sqe->opcode == IORING_OP_WRITE_FIXED;
      if ((sqe->opcode == IORING_OP_READ || sqe->opcode == IORING_OP_WRITE || fixed) &&
          shorten_ > 0) {
        const uint32_t half = sqe->len / 2 / shorten_align_ * shorten_align_;
        if (half > 0) {
          sqe->len = half;
          --shorten_;
        }
      }
      log_.push_back({sqe->opcode, tag, sqe->len, sqe->off, static_cast<uint32_t>(sqe->rw_flags)});
      if (fixed) {
        log_.back().addr = sqe->addr;
        log_.back().buf_index = sqe->buf_index;
        REQUIRE(sqe->buf_index < lent_.size());
        const iovec& b = lent_[sqe->buf_index];
        REQUIRE(sqe->addr + sqe->len <= b.iov_len);
        sqe->addr += reinterpret_cast<uintptr_t>(b.iov_base);
      }
    }
    handed_.clear();
    REQUIRE(io_uring_submit(&ring_) >= 0);
  }

  // The next completion of a backend SQE (10 s at most).
  io_uring_cqe next() {
    io_uring_cqe* cqe = nullptr;
    __kernel_timespec ts{10, 0};
    REQUIRE(io_uring_wait_cqe_timeout(&ring_, &cqe, &ts) == 0);
    const io_uring_cqe copy = *cqe;
    io_uring_cqe_seen(&ring_, cqe);
    REQUIRE((copy.user_data & kBackendBit) != 0);
    const uint16_t tag = tag_of(copy.user_data);
    REQUIRE(tag < kDepth);
    REQUIRE(in_flight_[tag]-- == 1);
    return copy;
  }

 private:
  io_uring ring_{};
  bool initialised_ = false;
  UniqueFd dummy_;
  int file_index_;
  std::vector<io_uring_sqe*> handed_;
  std::array<int, kDepth> in_flight_{};
  std::vector<SqeRecord> log_;
  std::vector<iovec> lent_;
  int shorten_ = 0;
  uint32_t shorten_align_ = 512;
};

IoRequest request(IoOp op, uint64_t offset, uint64_t length, void* buffer = nullptr,
                  uint32_t flags = 0, uint16_t tag = 0) {
  IoRequest req{};
  req.op = op;
  req.flags = flags;
  req.offset = offset;
  req.length = static_cast<uint32_t>(length);
  req.buffer = buffer;
  req.tag = tag;
  return req;
}

// Runs requests (distinct tags) concurrently through submit() / complete()
// and returns their results in order.
std::vector<int> run_async(FileBackend& b, TestQueue& q, const std::vector<IoRequest>& reqs) {
  std::map<uint16_t, size_t> index;
  std::vector<int> results(reqs.size(), kIoQueued);
  size_t pending = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    REQUIRE(index.emplace(reqs[i].tag, i).second);
    results[i] = b.submit(q, reqs[i]);
    if (results[i] == kIoQueued) ++pending;
  }
  q.flush();
  while (pending > 0) {
    const io_uring_cqe cqe = q.next();
    const int r = b.complete(q, cqe);
    q.flush();
    if (r == kIoQueued) continue;
    results.at(index.at(QueueContext::tag_of(cqe.user_data))) = r;
    --pending;
  }
  return results;
}

// A backend served either through its queue ring or through handle().
class Device {
 public:
  Device(std::unique_ptr<FileBackend> backend, bool async) : b_(std::move(backend)) {
    if (!async) return;
    q_ = std::make_unique<TestQueue>(b_->attach_fd());
    auto r = b_->attach(*q_);
    if (!r) FAIL("attach: " << r.error().to_string());
    attached_ = true;
  }
  ~Device() {
    if (attached_) b_->detach(*q_);
  }

  FileBackend& backend() { return *b_; }
  TestQueue* queue() { return q_.get(); }

  int io(const IoRequest& req) {
    if (!q_) return b_->handle(req);
    return run_async(*b_, *q_, {req}).at(0);
  }
  int io(IoOp op, uint64_t offset, uint64_t length, void* buffer = nullptr, uint32_t flags = 0) {
    return io(request(op, offset, length, buffer, flags));
  }

  void write_pattern(uint64_t offset, uint64_t length, uint32_t seed, uint32_t flags = 0) {
    Buffer buf(length);
    fill_pattern(buf, offset, seed);
    INFO("write " << offset << "+" << length);
    REQUIRE(io(IoOp::kWrite, offset, length, buf.data(), flags) == static_cast<int>(length));
  }
  std::vector<uint8_t> read(uint64_t offset, uint64_t length) {
    Buffer buf(length);  // pre-filled, so that bytes a read leaves alone show
    INFO("read " << offset << "+" << length);
    REQUIRE(io(IoOp::kRead, offset, length, buf.data()) == static_cast<int>(length));
    return buf.bytes();
  }
  void require_pattern(uint64_t offset, uint64_t length, uint32_t seed) {
    INFO("pattern " << seed << " at " << offset << "+" << length);
    REQUIRE(pattern_mismatch(read(offset, length), offset, seed) == -1);
  }
  void require_zeros(uint64_t offset, uint64_t length) {
    INFO("zeros at " << offset << "+" << length);
    REQUIRE(first_nonzero(read(offset, length)) == -1);
  }

 private:
  std::unique_ptr<FileBackend> b_;
  std::unique_ptr<TestQueue> q_;
  bool attached_ = false;
};

const char* mode_name(bool async) {
  return async ? "io_uring" : "handle()";
}

}  // namespace

// ---- opening -----------------------------------------------------------------

TEST_CASE("file backend creates a missing file at the given size, sparse", "[file]") {
  TempDir dir;
  const bool direct = direct_io_works(dir);
  const std::string path = dir.file("disk.img");
  auto b = open_ok(options(path, 64 * kMiB, direct));

  CHECK(b->type() == "file");
  CHECK(b->size() == 64 * kMiB);
  CHECK(b->path() == path);
  CHECK_FALSE(b->is_block_device());
  CHECK(b->direct_io() == direct);
  CHECK_FALSE(b->read_only());
  CHECK(file_size(path) == 64 * kMiB);
  CHECK(allocated_bytes(path) < kMiB);

  const int fl = ::fcntl(b->attach_fd(), F_GETFL);
  REQUIRE(fl >= 0);
  CHECK((fl & O_ACCMODE) == O_RDWR);
  CHECK(((fl & O_DIRECT) != 0) == direct);
  CHECK((fl & O_NONBLOCK) == 0);
  CHECK((::fcntl(b->attach_fd(), F_GETFD) & FD_CLOEXEC) != 0);

  const auto f = b->features();
  CHECK(f.volatile_cache);
  CHECK(f.discard);
  CHECK(f.write_zeroes);
  CHECK(f.discard_granularity == 4096);

  // An existing file is used as it is, with create or without, with its size
  // given or taken from the file.
  b.reset();
  auto again = open_ok(options(path, 0, direct, true));
  CHECK(again->size() == 64 * kMiB);
  again.reset();
  again = open_ok(options(path, 64 * kMiB, direct, false));
  CHECK(again->size() == 64 * kMiB);
}

TEST_CASE("file backend takes direct_io=false on any file system", "[file]") {
  TempDir dir;
  auto b = open_ok(options(dir.file("buffered.img"), kMiB, false));
  CHECK_FALSE(b->direct_io());
  CHECK((::fcntl(b->attach_fd(), F_GETFL) & O_DIRECT) == 0);
}

TEST_CASE("file backend refuses a missing file without create", "[file]") {
  TempDir dir;
  const std::string path = dir.file("missing.img");
  const auto e = open_error(options(path, kMiB, false, false));
  CHECK(e.code() == ENOENT);
  CHECK_THAT(e.message(), Catch::Contains(path) && Catch::Contains("does not exist") &&
                              Catch::Contains("\"create\": true"));
  CHECK_FALSE(std::filesystem::exists(path));
}

TEST_CASE("file backend needs a size to create a file", "[file]") {
  TempDir dir;
  const std::string path = dir.file("new.img");
  const auto e = open_error(options(path, 0, false, true));
  CHECK(e.code() == EINVAL);
  CHECK_THAT(e.message(), Catch::Contains(path) && Catch::Contains("size"));
  CHECK_FALSE(std::filesystem::exists(path));

  // Nor does a read-only device create one.
  auto o = options(path, kMiB, false, true);
  o.read_only = true;
  CHECK(open_error(o).code() == ENOENT);
  CHECK_FALSE(std::filesystem::exists(path));
}

TEST_CASE("file backend never resizes an existing file", "[file]") {
  TempDir dir;
  const std::string path = dir.file("disk.img");
  make_file(path, 8 * kMiB);
  for (uint64_t size : {4 * kMiB, 16 * kMiB}) {
    for (bool create : {false, true}) {
      INFO("size " << size << " create " << create);
      const auto e = open_error(options(path, size, false, create));
      CHECK(e.code() == EINVAL);
      CHECK_THAT(e.message(), Catch::Contains(path) && Catch::Contains(std::to_string(8 * kMiB)) &&
                                  Catch::Contains(std::to_string(size)));
      CHECK(file_size(path) == 8 * kMiB);
    }
  }
}

TEST_CASE("file backend resizes its file live, and never drops data unasked", "[file][resize]") {
  TempDir dir;
  const bool direct = direct_io_works(dir);
  const std::string path = dir.file("grow.img");
  for (bool async : {true, false}) {
    DYNAMIC_SECTION(mode_name(async)) {
      std::filesystem::remove(path);
      Device d(open_ok(options(path, 4 * kMiB, direct)), async);
      FileBackend& b = d.backend();
      d.write_pattern(kMiB, 64 * kKiB, 1);
      REQUIRE(b.check_resize(16 * kMiB, false).ok());
      REQUIRE(b.resize(16 * kMiB).ok());
      CHECK(b.size() == 16 * kMiB);
      CHECK(file_size(path) == 16 * kMiB);
      d.require_pattern(kMiB, 64 * kKiB, 1);
      d.require_zeros(4 * kMiB, 12 * kMiB);
      d.write_pattern(12 * kMiB, 64 * kKiB, 2);

      auto refused = b.check_resize(8 * kMiB, false);
      REQUIRE_FALSE(refused.ok());
      CHECK(refused.error().code() == ENOTEMPTY);
      CHECK_THAT(refused.error().message(),
                 Catch::Contains(path) && Catch::Contains("data is written at byte"));
      CHECK(file_size(path) == 16 * kMiB);
      // Up to the written data is no loss.
      CHECK(b.check_resize(12 * kMiB + 64 * kKiB, false).ok());

      REQUIRE(b.check_resize(8 * kMiB, true).ok());
      REQUIRE(b.resize(8 * kMiB).ok());
      CHECK(b.size() == 8 * kMiB);
      CHECK(file_size(path) == 8 * kMiB);
      Buffer buf(4096, 0);
      CHECK(d.io(IoOp::kRead, 12 * kMiB, 4096, buf.data()) == -EINVAL);
      d.require_pattern(kMiB, 64 * kKiB, 1);

      CHECK(b.check_resize(8 * kMiB + 100, true).error().code() == EINVAL);
      CHECK(b.check_resize(0, true).error().code() == EINVAL);
    }
  }
}

TEST_CASE("file backend cannot resize a read-only file", "[file][resize]") {
  TempDir dir;
  const std::string path = dir.file("ro.img");
  make_file(path, 4 * kMiB);
  auto o = options(path, 0, false, false);
  o.read_only = true;
  auto b = open_ok(o);
  CHECK(b->check_resize(8 * kMiB, true).error().code() == EROFS);
  CHECK(file_size(path) == 4 * kMiB);
}

TEST_CASE("file backend finishes a resize that a crash cut short, only when told", "[file][resize]") {
  TempDir dir;
  const std::string path = dir.file("cut.img");
  make_file(path, 8 * kMiB);
  auto o = options(path, 4 * kMiB, false, false);
  CHECK(open_error(o).code() == EINVAL);
  CHECK(file_size(path) == 8 * kMiB);
  o.finish_resize = true;
  auto b = open_ok(o);
  CHECK(b->size() == 4 * kMiB);
  CHECK(file_size(path) == 4 * kMiB);
  // Never grown behind the operator's back.
  b.reset();
  o.size = 16 * kMiB;
  CHECK(open_error(o).code() == EINVAL);
  CHECK(file_size(path) == 4 * kMiB);
}

TEST_CASE("file backend checks size against logical_block_size", "[file]") {
  TempDir dir;
  const std::string odd = dir.file("odd.img");
  make_file(odd, kMiB + 512);
  auto o = options(odd, 0, false, false);
  o.logical_block_size = 4096;
  auto e = open_error(o);
  CHECK(e.code() == EINVAL);
  CHECK_THAT(e.message(), Catch::Contains(odd) && Catch::Contains(std::to_string(kMiB + 512)) &&
                              Catch::Contains("4096"));
  o.logical_block_size = 512;
  CHECK(open_ok(o)->size() == kMiB + 512);

  // A size that is not a multiple is refused before anything is created.
  const std::string fresh = dir.file("fresh.img");
  auto c = options(fresh, kMiB + 1000, false, true);
  e = open_error(c);
  CHECK(e.code() == EINVAL);
  CHECK_THAT(e.message(), Catch::Contains(std::to_string(kMiB + 1000)));
  CHECK_FALSE(std::filesystem::exists(fresh));

  for (uint32_t lbs : {0u, 256u, 1000u, 3072u, 1u << 20}) {
    INFO("logical_block_size " << lbs);
    c = options(fresh, kMiB, false, true);
    c.logical_block_size = lbs;
    e = open_error(c);
    CHECK(e.code() == EINVAL);
    CHECK_THAT(e.message(), Catch::Contains("logical_block_size " + std::to_string(lbs)));
    CHECK_FALSE(std::filesystem::exists(fresh));
  }

  c = options(fresh, kMiB, false, true);
  c.logical_block_size = 4096;
  auto b = open_ok(c);
  CHECK(b->logical_block_size() == 4096);
  CHECK(b->features().discard_granularity == 4096);

  const std::string empty = dir.file("empty.img");
  make_file(empty, 0);
  e = open_error(options(empty, 0, false, false));
  CHECK(e.code() == EINVAL);
  CHECK_THAT(e.message(), Catch::Contains(empty) && Catch::Contains("0 bytes"));
}

TEST_CASE("file backend refuses directories and special files", "[file]") {
  TempDir dir;
  for (bool create : {false, true}) {
    for (bool read_only : {false, true}) {
      auto o = options(dir.path().string(), 0, false, create);
      o.read_only = read_only;
      const auto e = open_error(o);
      CHECK(e.code() == EISDIR);
      CHECK_THAT(e.message(), Catch::Contains(dir.path().string()) && Catch::Contains("directory"));
    }
  }

  const std::string fifo = dir.file("fifo");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  auto e = open_error(options(fifo, 0, false, false));  // must not block either
  CHECK(e.code() == EINVAL);
  CHECK_THAT(e.message(), Catch::Contains(fifo));

  e = open_error(options("/dev/null", 0, false, false));
  CHECK(e.code() == EINVAL);
  CHECK_THAT(e.message(), Catch::Contains("/dev/null"));

  e = open_error(options("", kMiB, false, true));
  CHECK(e.code() == EINVAL);
}

TEST_CASE("file backend locks the file against a second device", "[file]") {
  TempDir dir;
  const std::string path = dir.file("shared.img");
  auto first = open_ok(options(path, kMiB, false));

  auto e = open_error(options(path, kMiB, false));
  CHECK(e.code() == EBUSY);
  CHECK_THAT(e.message(), Catch::Contains(path) && Catch::Contains("already in use"));
  auto ro = options(path, 0, false, false);
  ro.read_only = true;
  CHECK(open_error(ro).code() == EBUSY);  // no reader next to a writer either

  // The lock goes with the backend.
  first.reset();
  auto reader1 = open_ok(ro);
  auto reader2 = open_ok(ro);  // readers may share
  e = open_error(options(path, kMiB, false));
  CHECK(e.code() == EBUSY);
  reader1.reset();
  reader2.reset();
  CHECK(open_ok(options(path, kMiB, false))->size() == kMiB);

  // Another process's lock counts the same (what a second daemon would hold).
  UniqueFd other(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(other);
  REQUIRE(::flock(other.get(), LOCK_EX | LOCK_NB) == 0);
  CHECK(open_error(ro).code() == EBUSY);
}

TEST_CASE("file backend opened read_only serves reads only", "[file]") {
  TempDir dir;
  const bool direct = direct_io_works(dir);
  const std::string path = dir.file("ro.img");
  {
    Device d(open_ok(options(path, 4 * kMiB, direct)), true);
    d.write_pattern(kMiB, 64 * kKiB, 7);
  }
  auto o = options(path, 0, direct, false);
  o.read_only = true;
  for (bool async : {true, false}) {
    DYNAMIC_SECTION(mode_name(async)) {
      Device d(open_ok(o), async);
      FileBackend& b = d.backend();
      CHECK(b.read_only());
      CHECK((::fcntl(b.attach_fd(), F_GETFL) & O_ACCMODE) == O_RDONLY);
      const auto f = b.features();
      CHECK_FALSE(f.volatile_cache);
      CHECK_FALSE(f.discard);
      CHECK_FALSE(f.write_zeroes);

      d.require_pattern(kMiB, 64 * kKiB, 7);
      Buffer buf(4096, 0x11);
      CHECK(d.io(IoOp::kWrite, 0, 4096, buf.data()) == -EROFS);
      CHECK(d.io(IoOp::kWrite, 0, 4096, buf.data(), kFua) == -EROFS);
      CHECK(d.io(IoOp::kDiscard, kMiB, 64 * kKiB) == -EROFS);
      CHECK(d.io(IoOp::kWriteZeroes, kMiB, 64 * kKiB) == -EROFS);
      CHECK(d.io(IoOp::kFlush, 0, 0) == 0);
      d.require_pattern(kMiB, 64 * kKiB, 7);
      d.require_zeros(0, 4096);
    }
  }
}

// ---- I/O -----------------------------------------------------------------------

TEST_CASE("file backend writes and reads back at several offsets", "[file]") {
  TempDir dir;
  const bool direct = direct_io_works(dir);
  const bool async = GENERATE(true, false);
  DYNAMIC_SECTION(mode_name(async)) {
    const std::string path = dir.file("rw.img");
    constexpr uint64_t kSize = 32 * kMiB;
    Device d(open_ok(options(path, kSize, direct)), async);

    struct Range {
      uint64_t offset, length;
    };
    const Range ranges[] = {
        {0, 4096},                  // first block
        {512, 512},                 // a single sector inside it
        {3 * 4096, 64 * kKiB},      // aligned run
        {kMiB + 512, 7 * 512},      // odd sectors
        {5 * kMiB - 4096, kMiB},    // crosses MiB boundaries
        {kSize - 4096, 4096},       // last block
        {kSize - 128 * kKiB, 512},  // near the end
    };
    uint32_t seed = 1;
    for (const auto& r : ranges) d.write_pattern(r.offset, r.length, seed++);
    seed = 1;
    for (const auto& r : ranges) {
      // {0, 4096} was partly overwritten by {512, 512}; check around it.
      if (seed == 1) {
        d.require_pattern(0, 512, 1);
        d.require_pattern(1024, 4096 - 1024, 1);
      } else {
        d.require_pattern(r.offset, r.length, seed);
      }
      ++seed;
    }
    d.require_zeros(16 * kMiB, kMiB);  // never written

    // The data is in the file, where another reader sees it.
    CHECK(pattern_mismatch(read_file(path, 3 * 4096, 64 * kKiB), 3 * 4096, 3) == -1);
    CHECK(pattern_mismatch(read_file(path, kSize - 4096, 4096), kSize - 4096, 6) == -1);

    // Zero-length reads and writes succeed without touching anything.
    CHECK(d.io(IoOp::kRead, 0, 0, nullptr) == 0);
    CHECK(d.io(IoOp::kWrite, kSize, 0, nullptr) == 0);
    // Past the end, or overflowing the offset.
    Buffer buf(4096);
    CHECK(d.io(IoOp::kRead, kSize, 4096, buf.data()) == -EINVAL);
    CHECK(d.io(IoOp::kWrite, kSize - 512, 4096, buf.data()) == -EINVAL);
    CHECK(d.io(IoOp::kRead, UINT64_MAX - 511, 4096, buf.data()) == -EINVAL);
    CHECK(d.io(request(static_cast<IoOp>(4), 0, 4096, buf.data())) == -EOPNOTSUPP);
  }
}

TEST_CASE("file backend keeps one SQE per tag with many tags in flight", "[file]") {
  TempDir dir;
  const bool direct = direct_io_works(dir);
  Device d(open_ok(options(dir.file("tags.img"), 16 * kMiB, direct)), true);
  TestQueue& q = *d.queue();

  std::vector<std::unique_ptr<Buffer>> bufs;
  std::vector<IoRequest> writes;
  for (uint16_t tag = 0; tag < TestQueue::kDepth; ++tag) {
    const uint64_t offset = tag * kMiB + tag * 4096;
    bufs.push_back(std::make_unique<Buffer>(256 * kKiB));
    fill_pattern(*bufs.back(), offset, 100 + tag);
    writes.push_back(request(IoOp::kWrite, offset, 256 * kKiB, bufs.back()->data(), 0, tag));
  }
  for (int r : run_async(d.backend(), q, writes)) CHECK(r == static_cast<int>(256 * kKiB));

  std::vector<IoRequest> reads = writes;
  for (uint16_t tag = 0; tag < TestQueue::kDepth; ++tag) {
    std::memset(bufs[tag]->data(), 0xA5, bufs[tag]->size());
    reads[tag].op = IoOp::kRead;
  }
  // Reads, a flush and zeroing mixed in one batch.
  reads[2] = request(IoOp::kFlush, 0, 0, nullptr, 0, 2);
  reads[5] = request(IoOp::kWriteZeroes, writes[5].offset, 64 * kKiB, nullptr, 0, 5);
  const auto results = run_async(d.backend(), q, reads);
  for (uint16_t tag = 0; tag < TestQueue::kDepth; ++tag) {
    INFO("tag " << tag);
    if (tag == 2 || tag == 5) {
      CHECK(results[tag] == 0);
      continue;
    }
    CHECK(results[tag] == static_cast<int>(256 * kKiB));
    CHECK(pattern_mismatch(bufs[tag]->bytes(), writes[tag].offset, 100 + tag) == -1);
  }
  d.require_zeros(writes[5].offset, 64 * kKiB);
  d.require_pattern(writes[5].offset + 64 * kKiB, 192 * kKiB, 105);
}

TEST_CASE("file backend resubmits the rest of short reads and writes", "[file]") {
  TempDir dir;
  const bool direct = direct_io_works(dir);
  Device d(open_ok(options(dir.file("short.img"), 8 * kMiB, direct)), true);
  TestQueue& q = *d.queue();

  // 256 KiB halved three times: four SQEs for the tag, one after the other.
  q.shorten_next(3, 4096);
  q.clear_log();
  d.write_pattern(kMiB, 256 * kKiB, 9, kFua);
  REQUIRE(q.count(IORING_OP_WRITE) == 4);
  uint64_t expect = kMiB;
  for (const auto& r : q.log()) {
    CHECK(r.off == expect);
    CHECK(r.op_flags == RWF_DSYNC);  // every piece of a FUA write
    expect += r.len;
  }
  CHECK(expect == kMiB + 256 * kKiB);

  q.shorten_next(3, 4096);
  q.clear_log();
  d.require_pattern(kMiB, 256 * kKiB, 9);
  CHECK(q.count(IORING_OP_READ) == 4);
  CHECK(pattern_mismatch(read_file(dir.file("short.img"), kMiB, 256 * kKiB), kMiB, 9) == -1);
}

TEST_CASE("file backend serves zero-copy requests from their fixed buffer",
          "[file][env][env-tmpdir-on-disk]") {
  TempDir dir;
  const bool direct = direct_io_works(dir);
  const std::string path = dir.file("zc.img");
  Device d(open_ok(options(path, 8 * kMiB, direct)), true);
  if (d.backend().serves_inline()) {
    SKIP_TEST("TMPDIR is in memory: served inline, zero copy not exercised");
  }
  REQUIRE(d.backend().zero_copy());
  TestQueue& q = *d.queue();
  constexpr uint16_t kTag = 3;
  Buffer lent(256 * kKiB);
  q.lend_buffer(kTag, lent);

  // A WRITE from the lent pages, in four pieces (short writes resubmitted at
  // the right offsets into the buffer and the file), FUA on every piece.
  fill_pattern(lent, kMiB, 21);
  IoRequest w = request(IoOp::kWrite, kMiB, 256 * kKiB, nullptr, kFua, kTag);
  w.buf_index = kTag;
  q.shorten_next(3, 4096);
  q.clear_log();
  REQUIRE(run_async(d.backend(), q, {w}).at(0) == static_cast<int>(256 * kKiB));
  REQUIRE(q.count(IORING_OP_WRITE_FIXED) == 4);
  uint64_t expect = 0;
  for (const auto& r : q.log()) {
    CHECK(r.buf_index == kTag);
    CHECK(r.addr == expect);
    CHECK(r.off == kMiB + expect);
    CHECK(r.op_flags == RWF_DSYNC);
    expect += r.len;
  }
  CHECK(expect == 256 * kKiB);
  CHECK(pattern_mismatch(read_file(path, kMiB, 256 * kKiB), kMiB, 21) == -1);

  // A READ into the lent pages.
  std::memset(lent.data(), 0, lent.size());
  IoRequest r = request(IoOp::kRead, kMiB, 256 * kKiB, nullptr, 0, kTag);
  r.buf_index = kTag;
  q.clear_log();
  REQUIRE(run_async(d.backend(), q, {r}).at(0) == static_cast<int>(256 * kKiB));
  REQUIRE(q.count(IORING_OP_READ_FIXED) == 1);
  CHECK(pattern_mismatch(lent.bytes(), kMiB, 21) == -1);

  // Neither a buffer nor a buffer index: refused, not dereferenced.
  CHECK(d.backend().submit(q, request(IoOp::kRead, 0, 4096, nullptr, 0, 1)) == -EINVAL);
  // handle() has no ring to read into a fixed buffer.
  CHECK(d.backend().handle(r) == -EINVAL);
}

TEST_CASE("file backend fails reads past a file that shrank", "[file]") {
  TempDir dir;
  const bool direct = direct_io_works(dir);
  const bool async = GENERATE(true, false);
  DYNAMIC_SECTION(mode_name(async)) {
    const std::string path = dir.file("shrink.img");
    Device d(open_ok(options(path, 2 * kMiB, direct)), async);
    d.write_pattern(0, 2 * kMiB, 3);
    REQUIRE(::truncate(path.c_str(), static_cast<off_t>(kMiB)) == 0);
    Buffer buf(64 * kKiB);
    CHECK(d.io(IoOp::kRead, kMiB + 64 * kKiB, 64 * kKiB, buf.data()) == -EIO);
    // Partly inside: the first part is read, the rest hits the end.
    CHECK(d.io(IoOp::kRead, kMiB - 4096, 64 * kKiB, buf.data()) == -EIO);
    d.require_pattern(kMiB - 64 * kKiB, 64 * kKiB, 3);
  }
}

TEST_CASE("file backend sends FUA writes as RWF_DSYNC and FLUSH as fdatasync", "[file]") {
  TempDir dir;
  const bool direct = direct_io_works(dir);
  const std::string path = dir.file("fua.img");
  Device d(open_ok(options(path, 4 * kMiB, direct)), true);
  TestQueue& q = *d.queue();

  q.clear_log();
  d.write_pattern(0, 64 * kKiB, 1, kFua);
  d.write_pattern(64 * kKiB, 64 * kKiB, 2);
  d.write_pattern(128 * kKiB, 4096, 3, kFua | ublkd::uapi::kIoFlagNoUnmap);
  REQUIRE(q.log().size() == 3);
  CHECK(q.log()[0].opcode == IORING_OP_WRITE);
  CHECK(q.log()[0].op_flags == RWF_DSYNC);
  CHECK(q.log()[1].op_flags == 0);
  CHECK(q.log()[2].op_flags == RWF_DSYNC);

  q.clear_log();
  CHECK(d.io(IoOp::kFlush, 0, 0) == 0);
  REQUIRE(q.log().size() == 1);
  CHECK(q.log()[0].opcode == IORING_OP_FSYNC);
  CHECK(q.log()[0].op_flags == IORING_FSYNC_DATASYNC);
  // The block layer's flush request has sector -1, and the descriptor says so.
  q.clear_log();
  CHECK(d.io(IoOp::kFlush, ~uint64_t{0} << 9, 0) == 0);
  REQUIRE(q.log().size() == 1);
  CHECK(q.log()[0].opcode == IORING_OP_FSYNC);

  d.require_pattern(0, 64 * kKiB, 1);
  d.require_pattern(64 * kKiB, 64 * kKiB, 2);
  d.require_pattern(128 * kKiB, 4096, 3);
}

TEST_CASE("file backend FUA and FLUSH through handle()", "[file]") {
  TempDir dir;
  const bool direct = direct_io_works(dir);
  Device d(open_ok(options(dir.file("fua-sync.img"), 4 * kMiB, direct)), false);
  d.write_pattern(0, 64 * kKiB, 1, kFua);
  CHECK(d.io(IoOp::kFlush, 0, 0) == 0);
  CHECK(d.io(IoOp::kFlush, ~uint64_t{0} << 9, 0) == 0);  // the kernel's sector -1
  d.require_pattern(0, 64 * kKiB, 1);
}

TEST_CASE("file backend DISCARD punches a hole that reads back as zeros", "[file]") {
  TempDir dir;
  const bool direct = direct_io_works(dir);
  const bool async = GENERATE(true, false);
  DYNAMIC_SECTION(mode_name(async)) {
    const std::string path = dir.file("discard.img");
    Device d(open_ok(options(path, 16 * kMiB, direct)), async);
    d.write_pattern(kMiB, 4 * kMiB, 5);
    REQUIRE(d.io(IoOp::kFlush, 0, 0) == 0);
    const uint64_t before = allocated_bytes(path);
    REQUIRE(before >= 4 * kMiB);

    if (d.queue()) d.queue()->clear_log();
    REQUIRE(d.io(IoOp::kDiscard, 2 * kMiB, 2 * kMiB) == 0);
    if (d.queue()) {
      REQUIRE(d.queue()->log().size() == 1);
      CHECK(d.queue()->log()[0].opcode == IORING_OP_FALLOCATE);
    }
    const uint64_t after = allocated_bytes(path);
    INFO("allocated before " << before << " after " << after);
    CHECK(after + 2 * kMiB <= before);
    CHECK(file_size(path) == 16 * kMiB);

    d.require_pattern(kMiB, kMiB, 5);
    d.require_zeros(2 * kMiB, 2 * kMiB);
    d.require_pattern(4 * kMiB, kMiB, 5);
    CHECK(first_nonzero(read_file(path, 2 * kMiB, 2 * kMiB)) == -1);

    // A range that is not whole file system blocks is zeroed all the same.
    REQUIRE(d.io(IoOp::kDiscard, kMiB + 512, 3 * 512) == 0);
    d.require_pattern(kMiB, 512, 5);
    d.require_zeros(kMiB + 512, 3 * 512);
    d.require_pattern(kMiB + 2048, 4096, 5);

    // The hole takes data again.
    d.write_pattern(2 * kMiB + 4096, 8192, 6);
    d.require_pattern(2 * kMiB + 4096, 8192, 6);

    CHECK(d.io(IoOp::kDiscard, 16 * kMiB - 4096, 8192) == -EINVAL);
    CHECK(d.io(IoOp::kDiscard, 0, 0) == 0);
  }
}

TEST_CASE("file backend WRITE_ZEROES reads back as zeros", "[file]") {
  TempDir dir;
  const bool direct = direct_io_works(dir);
  const bool async = GENERATE(true, false);
  const uint32_t flags = GENERATE(0u, ublkd::uapi::kIoFlagNoUnmap);
  DYNAMIC_SECTION(mode_name(async) << " flags " << flags) {
    const std::string path = dir.file("zeroes.img");
    Device d(open_ok(options(path, 16 * kMiB, direct)), async);
    d.write_pattern(0, 8 * kMiB, 8);
    if (d.queue()) d.queue()->clear_log();
    REQUIRE(d.io(request(IoOp::kWriteZeroes, kMiB + 4096, 3 * kMiB, nullptr, flags)) == 0);
    if (d.queue()) {
      REQUIRE(d.queue()->log().size() == 1);
      CHECK(d.queue()->log()[0].opcode == IORING_OP_FALLOCATE);
    }
    CHECK(file_size(path) == 16 * kMiB);
    d.require_pattern(0, kMiB + 4096, 8);
    d.require_zeros(kMiB + 4096, 3 * kMiB);
    d.require_pattern(4 * kMiB + 4096, 4 * kMiB - 4096, 8);
    CHECK(first_nonzero(read_file(path, kMiB + 4096, 3 * kMiB)) == -1);

    // Up to the very end of the device.
    d.write_pattern(15 * kMiB, kMiB, 9);
    REQUIRE(d.io(request(IoOp::kWriteZeroes, 16 * kMiB - 1536, 1536, nullptr, flags)) == 0);
    d.require_pattern(15 * kMiB, kMiB - 1536, 9);
    d.require_zeros(16 * kMiB - 1536, 1536);
  }
}

TEST_CASE("file backend writes zeros where fallocate cannot zero a range", "[file][env][env-shm]") {
  // tmpfs punches holes but refuses FALLOC_FL_ZERO_RANGE.
  if (!std::filesystem::is_directory("/dev/shm")) {
    SKIP_TEST("no /dev/shm; zero-write fallback not exercised");
  }
  TempDir dir("/dev/shm");
  const bool direct = direct_io_works(dir);
  const std::string path = dir.file("tmpfs.img");
  constexpr uint64_t kSize = 16 * kMiB;

  bool zero_range_refused = false;
  {
    const std::string probe = dir.file("zero-range-probe");
    make_file(probe, kMiB);
    UniqueFd fd(::open(probe.c_str(), O_RDWR | O_CLOEXEC));
    REQUIRE(fd);
    zero_range_refused =
        ::fallocate(fd.get(), FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 0, 4096) != 0 &&
        errno == EOPNOTSUPP;
  }
  if (!zero_range_refused)
    ublkd::test::record_partial_skip(
        "tmpfs zeroes ranges itself; the zero-write fallback is not exercised");

  const bool async = GENERATE(true, false);
  DYNAMIC_SECTION(mode_name(async)) {
    std::filesystem::remove(path);
    // On the ring, although tmpfs would be served inline: the fallback's
    // SQEs are what this checks.
    FileBackendOptions o = options(path, kSize, direct);
    o.inline_in_memory = false;
    Device d(open_ok(o), async);
    REQUIRE_FALSE(d.backend().serves_inline());
    d.write_pattern(0, 8 * kMiB, 4);

    // Several chunks of the zero buffer, the last one partial.
    const uint64_t offset = kMiB - 4096;
    const uint64_t length = 3 * FileBackend::kZeroChunk + 8192;
    if (d.queue()) d.queue()->clear_log();
    REQUIRE(d.io(IoOp::kWriteZeroes, offset, length) == 0);
    if (d.queue() && zero_range_refused) {
      const auto& log = d.queue()->log();
      REQUIRE(log.size() == 5);
      CHECK(log[0].opcode == IORING_OP_FALLOCATE);
      uint64_t expect = offset;
      for (size_t i = 1; i < log.size(); ++i) {
        CHECK(log[i].opcode == IORING_OP_WRITE);
        CHECK(log[i].tag == 0);
        CHECK(log[i].off == expect);
        CHECK(log[i].len <= FileBackend::kZeroChunk);
        expect += log[i].len;
      }
      CHECK(expect == offset + length);
    }
    d.require_pattern(0, offset, 4);
    d.require_zeros(offset, length);
    d.require_pattern(offset + length, 8 * kMiB - offset - length, 4);

    // Once refused, later requests write zeros straight away.
    if (d.queue()) d.queue()->clear_log();
    REQUIRE(d.io(IoOp::kWriteZeroes, 6 * kMiB, 64 * kKiB) == 0);
    if (d.queue() && zero_range_refused) {
      REQUIRE(d.queue()->log().size() == 1);
      CHECK(d.queue()->log()[0].opcode == IORING_OP_WRITE);
    }
    d.require_zeros(6 * kMiB, 64 * kKiB);

    // Hole punching works on tmpfs and keeps going through fallocate.
    if (d.queue()) d.queue()->clear_log();
    REQUIRE(d.io(IoOp::kDiscard, 7 * kMiB, kMiB) == 0);
    if (d.queue()) {
      REQUIRE(d.queue()->log().size() == 1);
      CHECK(d.queue()->log()[0].opcode == IORING_OP_FALLOCATE);
    }
    d.require_zeros(7 * kMiB, kMiB);
  }
}

TEST_CASE("file backend serves a tmpfs file inline and other files on the ring",
          "[file][env][env-shm]") {
  if (!std::filesystem::is_directory("/dev/shm")) {
    SKIP_TEST("no /dev/shm; inline path not exercised");
  }
  struct Where {
    const char* dir;
    bool in_memory;
  };
  // The build directory, where the tests run, is taken to be on disk; if it
  // is not, that half is skipped.
  struct statfs fs {};
  REQUIRE(::statfs(".", &fs) == 0);
  const bool cwd_in_memory = fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC;
  if (cwd_in_memory)
    ublkd::test::record_partial_skip(
        "the build directory is in memory; the ring half is not exercised");
  for (const Where w : {Where{"/dev/shm", true}, Where{".", cwd_in_memory}}) {
    INFO("directory " << w.dir);
    TempDir dir(w.dir);
    Device d(open_ok(options(dir.file("f.img"), 4 * kMiB, direct_io_works(dir))), true);
    CHECK(d.backend().serves_inline() == w.in_memory);
    CHECK(d.backend().io_notes().empty() != w.in_memory);
    d.queue()->clear_log();
    Buffer buf(64 * kKiB);
    fill_pattern(buf, kMiB, 9);
    const int r =
        d.backend().submit(*d.queue(), request(IoOp::kWrite, kMiB, 64 * kKiB, buf.data()));
    if (w.in_memory) {
      // The final result at once, and nothing on the ring.
      CHECK(r == static_cast<int>(64 * kKiB));
      CHECK(d.queue()->log().empty());
    } else {
      REQUIRE(r == kIoQueued);
      d.queue()->flush();
      CHECK(d.backend().complete(*d.queue(), d.queue()->next()) == static_cast<int>(64 * kKiB));
    }
    d.require_pattern(kMiB, 64 * kKiB, 9);
    d.require_zeros(0, kMiB);
    if (std::string(w.dir) == "/dev/shm") CHECK(d.backend().user_copy());
    if (!w.in_memory) {
      CHECK_FALSE(d.backend().user_copy());
      // Only a file on tmpfs reads a request's data from the char device.
      IoRequest req = request(IoOp::kWrite, 0, 4096);
      req.copy_fd = d.backend().attach_fd();
      CHECK(d.backend().handle(req) == -EINVAL);
    }
  }
}

namespace {

std::vector<uint8_t> pattern_bytes(uint64_t offset, uint64_t length, uint32_t seed) {
  std::vector<uint8_t> v(length);
  for (uint64_t i = 0; i < length; ++i) v[i] = pattern(offset + i, seed);
  return v;
}

}  // namespace

TEST_CASE("file backend serves a file on tmpfs from its pages, through user copy",
          "[file][env][env-shm]") {
  if (!std::filesystem::is_directory("/dev/shm")) {
    SKIP_TEST("no /dev/shm; the tmpfs path is not exercised");
  }
  TempDir dir("/dev/shm");
  const std::string path = dir.file("mapped.img");
  // Not a whole number of 64 KiB chunks: the last one is short.
  const uint64_t size = 4 * kMiB + 3 * 512;
  make_file(path, size);
  {
    // Data written before the device opens must be seen: the chunk bitmap
    // comes from the file's holes.
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    REQUIRE(fd);
    const auto data = pattern_bytes(kMiB, 100 * kKiB, 1);
    REQUIRE(::pwrite(fd.get(), data.data(), data.size(), kMiB) ==
            static_cast<ssize_t>(data.size()));
  }
  auto o = options(path, size, direct_io_works(dir), /*create=*/false);
  o.logical_block_size = 512;
  auto b = open_ok(o);
  CHECK(b->serves_inline());
  CHECK(b->user_copy());
  CHECK_FALSE(b->zero_copy());
  CHECK(b->features().discard_granularity == 64 * kKiB);
  CHECK_THAT(b->io_notes(), Catch::Contains("tmpfs"));

  CopyFd copy;
  REQUIRE(copy.fd);
  std::vector<uint8_t> model(size, 0);
  std::copy_n(pattern_bytes(kMiB, 100 * kKiB, 1).begin(), 100 * kKiB, model.begin() + kMiB);
  auto expect = [&](uint64_t offset, uint64_t length) {
    return std::vector<uint8_t>(model.begin() + static_cast<ptrdiff_t>(offset),
                                model.begin() + static_cast<ptrdiff_t>(offset + length));
  };

  SECTION("reads of what was never written allocate nothing") {
    const uint64_t before = allocated_bytes(path);
    copy.put(std::vector<uint8_t>(2 * kMiB, 0xA5));
    REQUIRE(copy.io(*b, IoOp::kRead, 2 * kMiB, 2 * kMiB) == static_cast<int>(2 * kMiB));
    CHECK(first_nonzero(copy.get(2 * kMiB)) == -1);
    CHECK(allocated_bytes(path) == before);
  }

  SECTION("user copy, buffers and discards agree with a plain copy") {
    std::mt19937_64 rng(4242);
    const uint64_t sectors = size / 512;
    for (uint32_t i = 0; i < 300; ++i) {
      const uint64_t first = rng() % sectors;
      const uint64_t count = 1 + rng() % std::min<uint64_t>(sectors - first, 384);
      const uint64_t offset = first * 512;
      const uint64_t length = count * 512;
      INFO("step " << i << " at " << offset << "+" << length);
      switch (rng() % 5) {
        case 0: {  // a WRITE whose data the backend reads from the char device
          const auto data = pattern_bytes(offset, length, 10 + i);
          copy.put(data);
          REQUIRE(copy.io(*b, IoOp::kWrite, offset, length) == static_cast<int>(length));
          std::copy(data.begin(), data.end(), model.begin() + static_cast<ptrdiff_t>(offset));
          break;
        }
        case 1: {  // a WRITE from a buffer (a device without USER_COPY)
          Buffer buf(length);
          fill_pattern(buf, offset, 10 + i);
          REQUIRE(b->handle(request(IoOp::kWrite, offset, length, buf.data())) ==
                  static_cast<int>(length));
          std::copy_n(buf.data(), length, model.begin() + static_cast<ptrdiff_t>(offset));
          break;
        }
        case 2:
        case 3: {
          const IoOp op = rng() % 2 ? IoOp::kDiscard : IoOp::kWriteZeroes;
          REQUIRE(b->handle(request(op, offset, length)) == 0);
          std::fill_n(model.begin() + static_cast<ptrdiff_t>(offset), length, 0);
          break;
        }
        default: {
          Buffer buf(length);
          REQUIRE(b->handle(request(IoOp::kRead, offset, length, buf.data())) ==
                  static_cast<int>(length));
          REQUIRE(buf.bytes() == expect(offset, length));
          break;
        }
      }
      // A READ the backend writes to the char device, over bytes that must
      // all change, holes included.
      copy.put(std::vector<uint8_t>(length, 0xA5));
      REQUIRE(copy.io(*b, IoOp::kRead, offset, length) == static_cast<int>(length));
      REQUIRE(copy.get(length) == expect(offset, length));
    }
    // What the file holds, read past the backend.
    CHECK(read_file(path, 0, size) == model);
  }

  SECTION("a discard hands whole chunks back") {
    const auto data = pattern_bytes(0, 2 * kMiB, 3);
    copy.put(data);
    REQUIRE(copy.io(*b, IoOp::kWrite, 0, 2 * kMiB) == static_cast<int>(2 * kMiB));
    const uint64_t held = allocated_bytes(path);
    CHECK(held >= 2 * kMiB);
    REQUIRE(b->handle(request(IoOp::kDiscard, 0, 2 * kMiB)) == 0);
    CHECK(allocated_bytes(path) <= held - 2 * kMiB);
    CHECK(first_nonzero(read_file(path, 0, 2 * kMiB)) == -1);
  }

  SECTION("a grow maps the new range, a shrink forgets the range cut off") {
    copy.put(pattern_bytes(3 * kMiB, 64 * kKiB, 4));
    REQUIRE(copy.io(*b, IoOp::kWrite, 3 * kMiB, 64 * kKiB) == static_cast<int>(64 * kKiB));
    REQUIRE(b->resize(8 * kMiB).ok());
    copy.put(pattern_bytes(7 * kMiB, 64 * kKiB, 5));
    REQUIRE(copy.io(*b, IoOp::kWrite, 7 * kMiB, 64 * kKiB) == static_cast<int>(64 * kKiB));
    copy.put(std::vector<uint8_t>(64 * kKiB, 0xA5));
    REQUIRE(copy.io(*b, IoOp::kRead, 7 * kMiB, 64 * kKiB) == static_cast<int>(64 * kKiB));
    CHECK(copy.get(64 * kKiB) == pattern_bytes(7 * kMiB, 64 * kKiB, 5));
    // Cut to 2 MiB and grown again: both written ranges read as zeros.
    REQUIRE(b->resize(2 * kMiB).ok());
    REQUIRE(b->resize(8 * kMiB).ok());
    for (const uint64_t at : {3 * kMiB, 7 * kMiB}) {
      copy.put(std::vector<uint8_t>(64 * kKiB, 0xA5));
      REQUIRE(copy.io(*b, IoOp::kRead, at, 64 * kKiB) == static_cast<int>(64 * kKiB));
      CHECK(first_nonzero(copy.get(64 * kKiB)) == -1);
    }
    // Only the data written before the device opened is still held.
    CHECK(allocated_bytes(path) <= 128 * kKiB);
  }

  SECTION("the short last chunk is written, discarded and handed back whole") {
    const uint64_t tail = size - 4 * kMiB;  // 1536 bytes
    copy.put(pattern_bytes(4 * kMiB - 64 * kKiB, 64 * kKiB + tail, 6));
    REQUIRE(copy.io(*b, IoOp::kWrite, 4 * kMiB - 64 * kKiB, 64 * kKiB + tail) ==
            static_cast<int>(64 * kKiB + tail));
    const uint64_t held = allocated_bytes(path);
    REQUIRE(b->handle(request(IoOp::kDiscard, 4 * kMiB, tail)) == 0);
    CHECK(allocated_bytes(path) < held);
    CHECK(first_nonzero(read_file(path, 4 * kMiB, tail)) == -1);
    CHECK(read_file(path, 4 * kMiB - 64 * kKiB, 64 * kKiB) ==
          pattern_bytes(4 * kMiB - 64 * kKiB, 64 * kKiB, 6));
  }

  SECTION("a shrink inside a chunk keeps what is before the cut") {
    copy.put(pattern_bytes(2 * kMiB, 128 * kKiB, 7));
    REQUIRE(copy.io(*b, IoOp::kWrite, 2 * kMiB, 128 * kKiB) == static_cast<int>(128 * kKiB));
    const uint64_t cut = 2 * kMiB + 1536;
    REQUIRE(b->resize(cut).ok());
    REQUIRE(b->resize(size).ok());
    copy.put(std::vector<uint8_t>(128 * kKiB, 0xA5));
    REQUIRE(copy.io(*b, IoOp::kRead, 2 * kMiB, 128 * kKiB) == static_cast<int>(128 * kKiB));
    auto want = pattern_bytes(2 * kMiB, 1536, 7);
    want.resize(128 * kKiB, 0);
    CHECK(copy.get(128 * kKiB) == want);
  }

  SECTION("a device opened again sees what the last one wrote") {
    copy.put(pattern_bytes(3 * kMiB, 200 * kKiB, 8));
    REQUIRE(copy.io(*b, IoOp::kWrite, 3 * kMiB, 200 * kKiB) == static_cast<int>(200 * kKiB));
    b.reset();
    b = open_ok(o);
    REQUIRE(b->user_copy());
    for (const auto& [at, seed, length] :
         {std::tuple{kMiB, 1u, 100 * kKiB}, std::tuple{3 * kMiB, 8u, 200 * kKiB}}) {
      copy.put(std::vector<uint8_t>(length, 0));
      REQUIRE(copy.io(*b, IoOp::kRead, at, length) == static_cast<int>(length));
      CHECK(copy.get(length) == pattern_bytes(at, length, seed));
    }
  }

  SECTION("read-only: reads through user copy, writes refused") {
    b.reset();
    o.read_only = true;
    b = open_ok(o);
    REQUIRE(b->user_copy());
    copy.put(std::vector<uint8_t>(100 * kKiB, 0));
    REQUIRE(copy.io(*b, IoOp::kRead, kMiB, 100 * kKiB) == static_cast<int>(100 * kKiB));
    CHECK(copy.get(100 * kKiB) == pattern_bytes(kMiB, 100 * kKiB, 1));
    CHECK(copy.io(*b, IoOp::kWrite, kMiB, 4096) == -EROFS);
    CHECK(b->handle(request(IoOp::kDiscard, kMiB, 64 * kKiB)) == -EROFS);
  }

  SECTION("a FLUSH sets the file's mtime") {
    const timespec old[2] = {{0, UTIME_OMIT}, {1000, 0}};
    REQUIRE(::utimensat(AT_FDCWD, path.c_str(), old, 0) == 0);
    copy.put(pattern_bytes(0, 4096, 9));
    REQUIRE(copy.io(*b, IoOp::kWrite, 0, 4096) == 4096);
    REQUIRE(b->handle(request(IoOp::kFlush, 0, 0)) == 0);
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(st.st_mtim.tv_sec > 1000);
  }

  SECTION("a request without buffer or char device is refused") {
    CHECK(b->handle(request(IoOp::kRead, 0, 4096)) == -EINVAL);
    CHECK(b->handle(request(IoOp::kWrite, 0, 4096)) == -EINVAL);
  }
}

TEST_CASE("file backend needs a fixed file and tells stray completions apart", "[file]") {
  TempDir dir;
  auto b = open_ok(options(dir.file("ctx.img"), kMiB, false));
  {
    TestQueue no_file(b->attach_fd(), -1);
    auto r = b->attach(no_file);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message(), Catch::Contains(dir.file("ctx.img")));
  }
  TestQueue q(b->attach_fd());
  REQUIRE(b->attach(q).ok());
  REQUIRE(q.backend_data != nullptr);

  // A completion for a tag with nothing queued, or with the wrong cookie.
  io_uring_cqe cqe{};
  cqe.user_data = QueueContext::backend_user_data(3, 1);
  cqe.res = 4096;
  CHECK(b->complete(q, cqe) == -EIO);
  cqe.user_data = QueueContext::backend_user_data(TestQueue::kDepth, 1);
  CHECK(b->complete(q, cqe) == -EIO);
  // A tag beyond the queue depth is refused.
  Buffer buf(4096);
  CHECK(b->submit(q, request(IoOp::kRead, 0, 4096, buf.data(), 0, TestQueue::kDepth)) == -EIO);

  b->detach(q);
  CHECK(q.backend_data == nullptr);
}

// ---- block devices -----------------------------------------------------------

namespace {

// A loop device over a file, detached again when the last fd closes. Empty
// where loop devices cannot be set up (no module, no permission, a container).
struct LoopDevice {
  std::string path;
  UniqueFd fd;
};

std::optional<LoopDevice> attach_loop(const std::string& file, std::string& why) {
  UniqueFd ctl(::open("/dev/loop-control", O_RDWR | O_CLOEXEC));
  if (!ctl) {
    why = std::string("/dev/loop-control: ") + std::strerror(errno);
    return std::nullopt;
  }
  UniqueFd backing(::open(file.c_str(), O_RDWR | O_CLOEXEC));
  REQUIRE(backing);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const int n = ::ioctl(ctl.get(), LOOP_CTL_GET_FREE);
    if (n < 0) {
      why = std::string("LOOP_CTL_GET_FREE: ") + std::strerror(errno);
      return std::nullopt;
    }
    LoopDevice loop;
    loop.path = "/dev/loop" + std::to_string(n);
    loop.fd.reset(::open(loop.path.c_str(), O_RDWR | O_CLOEXEC));
    if (!loop.fd) {
      why = loop.path + ": " + std::strerror(errno);
      return std::nullopt;
    }
    loop_config config{};
    config.fd = static_cast<uint32_t>(backing.get());
    config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
    if (::ioctl(loop.fd.get(), LOOP_CONFIGURE, &config) == 0) return loop;
    if (errno != EBUSY) {  // EBUSY: someone else took it first
      why = loop.path + " LOOP_CONFIGURE: " + std::strerror(errno);
      return std::nullopt;
    }
  }
  why = "no free loop device";
  return std::nullopt;
}

}  // namespace

TEST_CASE("file backend serves a block device at its own size", "[file][env][env-loop]") {
  TempDir dir;
  const std::string backing = dir.file("loop-backing.img");
  make_file(backing, 8 * kMiB);
  std::string why;
  auto loop = attach_loop(backing, why);
  if (!loop) {
    SKIP_TEST("block device path not exercised: " + why);
  }
  INFO(loop->path);

  auto e = open_error(options(loop->path, 4 * kMiB, true, false));
  CHECK(e.code() == EINVAL);
  CHECK_THAT(e.message(), Catch::Contains(loop->path) &&
                              Catch::Contains(std::to_string(8 * kMiB)) &&
                              Catch::Contains(std::to_string(4 * kMiB)));

  const bool async = GENERATE(true, false);
  DYNAMIC_SECTION(mode_name(async)) {
    Device d(open_ok(options(loop->path, 0, true, true)), async);
    FileBackend& b = d.backend();
    CHECK(b.is_block_device());
    CHECK(b.size() == 8 * kMiB);
    CHECK(b.features().discard_granularity == 0);
    CHECK(b.features().volatile_cache);
    auto resize = b.check_resize(16 * kMiB, true);
    CHECK(resize.error().code() == EOPNOTSUPP);
    CHECK_THAT(resize.error().message(), Catch::Contains(loop->path));

    // Exclusive: neither a second backend nor a reader gets it.
    e = open_error(options(loop->path, 0, true, false));
    CHECK(e.code() == EBUSY);
    CHECK_THAT(e.message(), Catch::Contains(loop->path));
    auto ro = options(loop->path, 0, true, false);
    ro.read_only = true;
    CHECK(open_error(ro).code() == EBUSY);

    d.write_pattern(0, 8 * kMiB, 11, kFua);
    REQUIRE(d.io(IoOp::kFlush, 0, 0) == 0);
    d.require_pattern(0, 8 * kMiB, 11);
    REQUIRE(d.io(IoOp::kWriteZeroes, kMiB, kMiB) == 0);
    REQUIRE(d.io(IoOp::kDiscard, 4 * kMiB, 512 * kKiB) == 0);
    d.require_pattern(0, kMiB, 11);
    d.require_zeros(kMiB, kMiB);
    d.require_pattern(2 * kMiB, 2 * kMiB, 11);
    d.require_zeros(4 * kMiB, 512 * kKiB);
    d.require_pattern(4 * kMiB + 512 * kKiB, 4 * kMiB - 512 * kKiB, 11);
    REQUIRE(d.io(IoOp::kFlush, 0, 0) == 0);
  }
  // Through the loop device into its backing file.
  CHECK(pattern_mismatch(read_file(backing, 6 * kMiB, kMiB), 6 * kMiB, 11) == -1);
}
