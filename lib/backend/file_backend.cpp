#include "backend/file_backend.h"

#include <fcntl.h>
#include <liburing.h>
#include <linux/falloc.h>
#include <linux/magic.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <utility>

#include "base/io_all.h"
#include "base/mapping.h"
#include "uapi/ublk.h"

namespace ublkd {

namespace {

// What a backend SQE of a tag does; also its cookie in user_data, so that a
// completion can be checked against the step the tag is in.
enum Step : uint16_t {
  kStepNone = 0,
  kStepRw = 1,         // READ / WRITE of the rest of the request
  kStepSync = 2,       // fdatasync for FLUSH
  kStepFallocate = 3,  // hole punch / zero range for DISCARD / WRITE_ZEROES
  kStepZeroWrite = 4,  // one chunk of zeros where fallocate is refused
};

constexpr char kBufferedHint[] = "set \"direct_io\": false (--buffered in ublkctl)";

std::string num(uint64_t v) {
  return std::to_string(v);
}

bool is_power_of_two(uint64_t v) {
  return v != 0 && (v & (v - 1)) == 0;
}

uint64_t page_size() {
  return static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

// One zero buffer for the whole process: it is only ever read, so every
// queue of every file backend can write from it at once. Faulted in and
// then made read-only, so that it holds real pages (not the shared zero
// page, which direct I/O would have to pin) that nothing can scribble on.
const std::byte* zero_buffer() {
  static const Mapping zeros = [] {
    void* p = ::mmap(nullptr, FileBackend::kZeroChunk, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) return Mapping();
    Mapping m(p, FileBackend::kZeroChunk);
    std::memset(p, 0, FileBackend::kZeroChunk);
    if (::mprotect(p, FileBackend::kZeroChunk, PROT_READ) != 0) return Mapping();
    return m;
  }();
  return static_cast<const std::byte*>(zeros.get());
}

std::string fsync_dir_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Creates `path` as a sparse file of `size` bytes. Returns false if the file
// appeared in the meantime (then it is used as it is, like any existing file).
Result<bool> create_file(const std::string& path, uint64_t size) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0600));
  if (!fd) {
    if (errno == EEXIST) return false;
    return errno_error("create " + path);
  }
  auto undo = [&](std::string what) {
    const int err = errno;
    ::unlink(path.c_str());
    return Error(err, std::move(what));
  };
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return undo("resize new file " + path + " to " + num(size) + " bytes");
  }
  // Without this, a crash soon after could leave the device's data written
  // into a file that no longer exists, or exists with size 0: FLUSH only
  // fdatasync()s the file, which covers neither its name nor its first size.
  if (::fsync(fd.get()) != 0) return undo("fsync new file " + path);
  const std::string dir = fsync_dir_of(path);
  UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd || ::fsync(dfd.get()) != 0) return undo("fsync directory " + dir + " of new file");
  return true;
}

// Removes a file this open() created unless the open succeeds, so that
// correcting the options and retrying starts from the same state.
struct RemoveOnFailure {
  const std::string& path;
  bool armed = false;
  ~RemoveOnFailure() {
    if (armed) ::unlink(path.c_str());
  }
};

// O_DIRECT may be accepted at open() and only refused by the first read
// (some file systems), or the file system may need a larger alignment than
// logical_block_size. A read of one block at offset 0 tells both.
Result<void> probe_direct_io(int fd, const std::string& path, uint32_t lbs) {
  const uint64_t page = page_size();
  void* p = ::mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return errno_error("allocate a buffer to probe direct I/O on " + path);
  Mapping buf(p, page);
  if (::pread(fd, p, lbs, 0) >= 0) return {};
  const int err = errno;
  if (err != EINVAL) return Error(err, "read the first block of " + path + " with direct I/O");
  // Find the alignment that would work, to say what to change.
  for (uint64_t n = uint64_t{lbs} * 2; n <= page; n *= 2) {
    if (::pread(fd, p, n, 0) >= 0) {
      return Error(EINVAL, "direct I/O on " + path + " needs a logical_block_size of at least " +
                               num(n) + ", not " + num(lbs) + "; raise it, or " + kBufferedHint);
    }
  }
  return Error(EINVAL,
               "the file system of " + path + " refuses direct I/O (O_DIRECT); " + kBufferedHint);
}

// The type of the file system the file is on (statfs f_type), 0 when
// that cannot be told.
long fs_type(int fd) {
  struct statfs fs {};
  return ::fstatfs(fd, &fs) == 0 ? static_cast<long>(fs.f_type) : 0;
}

// A file system whose data is memory (tmpfs, ramfs). io_uring hands reads and
// writes of such a file (with O_DIRECT, at least up to 7.2) to one of its
// worker threads, which then does a memory copy: the hand-off and the
// thread switch cost more than the copy. Served inline in the queue
// thread, the same request is one pread/pwrite (on tmpfs: one copy between
// the file's mapped pages and the request's, see ChunkedMemory).
bool in_memory_fs(long type) {
  return type == TMPFS_MAGIC || type == RAMFS_MAGIC;
}

}  // namespace

struct FileBackend::Tag {
  std::byte* buffer;
  uint64_t offset;
  uint32_t length;
  uint32_t done;  // bytes transferred (or zeroed) so far
  uint32_t flags;
  IoOp op;
  uint16_t step;
  int32_t buf_index;  // the request's pages as a fixed buffer, or -1
};

struct FileBackend::QueueState {
  uint16_t depth = 0;
  std::unique_ptr<Tag[]> tags;
};

FileBackend::FileBackend(UniqueFd fd, std::string path, uint64_t size, bool block_device,
                         bool direct_io, bool read_only, uint32_t logical_block_size,
                         const std::byte* zeros, bool serve_inline,
                         std::unique_ptr<ChunkedMemory> memory)
    : fd_(std::move(fd)),
      path_(std::move(path)),
      size_(size),
      block_device_(block_device),
      direct_io_(direct_io),
      read_only_(read_only),
      logical_block_size_(logical_block_size),
      zeros_(zeros),
      inline_(serve_inline),
      memory_(std::move(memory)) {}

FileBackend::~FileBackend() {
  // Queue rings that registered the fd keep the open file alive until their
  // asynchronous teardown finishes, and the lock with it. Dropping the lock
  // now lets the same file be served again as soon as this backend is gone.
  if (fd_) ::flock(fd_.get(), LOCK_UN);
}

namespace {

// What can be checked before the file is looked at.
Result<void> check_options(const FileBackendOptions& o) {
  const std::string& path = o.path;
  if (path.empty()) return Error(EINVAL, "file backend: no path given");
  const uint32_t lbs = o.logical_block_size;
  const uint64_t page = page_size();
  if (lbs < 512 || lbs > page || !is_power_of_two(lbs)) {
    return Error(EINVAL, path + ": logical_block_size " + num(lbs) +
                             " is not a power of two between 512 and " + num(page));
  }
  if (o.size % lbs != 0) {
    return Error(EINVAL, path + ": size " + num(o.size) +
                             " is not a multiple of logical_block_size " + num(lbs));
  }
  if (o.size > static_cast<uint64_t>(std::numeric_limits<off_t>::max())) {
    return Error(EINVAL, path + ": size " + num(o.size) + " is too large");
  }
  return {};
}

// The file's stat, after creating it where the options ask for that; a
// file created here is marked for removal in `remove_created`.
Result<struct stat> stat_or_create(const FileBackendOptions& o, RemoveOnFailure& remove_created) {
  const std::string& path = o.path;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) return errno_error("stat " + path);
    if (!o.create) {
      return Error(ENOENT, path + " does not exist (set \"create\": true to create it)");
    }
    if (o.read_only) {
      return Error(ENOENT, path + " does not exist, and a read_only device does not create it");
    }
    if (o.size == 0) {
      return Error(EINVAL, path + " does not exist; creating it needs a size (size is 0)");
    }
    auto created = create_file(path, o.size);
    if (!created) return created.error();
    remove_created.armed = created.value();
    if (::stat(path.c_str(), &st) != 0) return errno_error("stat " + path);
  }
  if (S_ISDIR(st.st_mode)) {
    return Error(EISDIR, path + " is a directory, not a regular file or block device");
  }
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    return Error(EINVAL, path + " is neither a regular file nor a block device");
  }
  return st;
}

struct OpenedFile {
  UniqueFd fd;
  struct stat st;  // of the open file
};

// Opens the file (`st` from before the open), blocking and locked.
Result<OpenedFile> open_locked(const FileBackendOptions& o, const struct stat& st) {
  const std::string& path = o.path;
  // O_NONBLOCK only guards the open itself, in case the path was replaced by
  // a FIFO since stat(); it is cleared again below.
  int flags = O_CLOEXEC | O_NOCTTY | O_NONBLOCK | (o.read_only ? O_RDONLY : O_RDWR);
  if (o.direct_io) flags |= O_DIRECT;
  // For a block device O_EXCL means "fail if mounted or claimed by another
  // driver or exclusive opener", which is exactly what must not be written to.
  if (S_ISBLK(st.st_mode) && !o.read_only) flags |= O_EXCL;
  OpenedFile f{UniqueFd(::open(path.c_str(), flags)), {}};
  if (!f.fd) {
    const int err = errno;
    if (err == EINVAL && o.direct_io) {
      return Error(EINVAL, "the file system of " + path + " refuses direct I/O (O_DIRECT); " +
                               kBufferedHint);
    }
    if (err == EBUSY && S_ISBLK(st.st_mode)) {
      return Error(EBUSY, path + " is in use (mounted, or held by another program or driver)");
    }
    return Error(err, std::string("open ") + path + (o.read_only ? " read-only" : " read-write"));
  }
  if (::fstat(f.fd.get(), &f.st) != 0) return errno_error("fstat " + path);
  if (!S_ISREG(f.st.st_mode) && !S_ISBLK(f.st.st_mode)) {
    return Error(EINVAL, path + " is neither a regular file nor a block device");
  }
  const int fl = ::fcntl(f.fd.get(), F_GETFL);
  if (fl < 0 || ::fcntl(f.fd.get(), F_SETFL, fl & ~O_NONBLOCK) != 0) {
    return errno_error("set " + path + " to blocking mode");
  }
  // A shared lock for read_only: readers may share a file, but never with a
  // writer. The lock belongs to this open file and dies with it.
  if (::flock(f.fd.get(), (o.read_only ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return Error(EBUSY, path + " is already in use by another ublk device (locked)");
    }
    return errno_error("lock " + path);
  }
  return f;
}

// The size the device gets: the options', which must be the file's own,
// or the file's.
Result<uint64_t> device_size(const FileBackendOptions& o, const OpenedFile& f) {
  const std::string& path = o.path;
  const uint32_t lbs = o.logical_block_size;
  const bool block = S_ISBLK(f.st.st_mode);
  uint64_t actual = static_cast<uint64_t>(f.st.st_size);
  if (block) {
    if (::ioctl(f.fd.get(), BLKGETSIZE64, &actual) != 0) {
      return errno_error("get the size of block device " + path);
    }
    int sector = 0;
    if (::ioctl(f.fd.get(), BLKSSZGET, &sector) != 0) {
      return errno_error("get the logical sector size of block device " + path);
    }
    if (o.direct_io && static_cast<uint64_t>(sector) > lbs) {
      return Error(EINVAL, "direct I/O on " + path + " needs a logical_block_size of at least " +
                               num(static_cast<uint64_t>(sector)) + " (its sector size), not " +
                               num(lbs) + "; raise it, or " + kBufferedHint);
    }
  }
  const char* what = block ? "block device " : "file ";
  uint64_t size = o.size;
  if (size == 0) {
    size = actual;
  } else if (size < actual && o.finish_resize && !block && !o.read_only) {
    if (::ftruncate(f.fd.get(), static_cast<off_t>(size)) != 0)
      return errno_error("cut " + path + " to " + num(size) + " bytes");
  } else if (size != actual) {
    return Error(EINVAL, std::string(what) + path + " is " + num(actual) + " bytes but size is " +
                             num(size) + "; omit size to use the " +
                             (block ? "device's" : "file's") + " size" +
                             (block ? "" : ", or resize the file yourself"));
  }
  if (size == 0) return Error(EINVAL, std::string(what) + path + " is empty (0 bytes)");
  if (size % lbs != 0) {
    return Error(EINVAL, std::string(what) + path + " is " + num(size) +
                             " bytes, which is not a multiple of logical_block_size " + num(lbs));
  }
  return size;
}

}  // namespace

Result<std::unique_ptr<FileBackend>> FileBackend::open(const FileBackendOptions& o) {
  if (auto r = check_options(o); !r) return r.error();
  RemoveOnFailure remove_created{o.path};
  auto st = stat_or_create(o, remove_created);
  if (!st) return st.error();
  auto file = open_locked(o, *st);
  if (!file) return file.error();
  auto size = device_size(o, *file);
  if (!size) return size.error();
  if (o.direct_io) {
    if (auto r = probe_direct_io(file->fd.get(), o.path, o.logical_block_size); !r)
      return r.error();
  }
  const std::byte* zeros = nullptr;
  if (!o.read_only) {
    zeros = zero_buffer();
    if (zeros == nullptr) return Error(ENOMEM, "allocate the zero buffer for " + o.path);
  }
  const bool block = S_ISBLK(file->st.st_mode);
  const long type = block ? 0 : fs_type(file->fd.get());
  const bool serve_inline = o.inline_in_memory && in_memory_fs(type);
  // tmpfs, not ramfs: ChunkedMemory needs holes (SEEK_DATA, PUNCH_HOLE) and
  // a page cache that is the file's storage.
  std::unique_ptr<ChunkedMemory> memory;
  if (serve_inline && type == TMPFS_MAGIC && *size <= ChunkedMemory::kMaxSize) {
    auto mapped = ChunkedMemory::map(file->fd.get(), *size, !o.read_only);
    if (!mapped) return mapped.error().wrap(o.path);
    memory = std::move(mapped).value();
  }
  remove_created.armed = false;
  return std::unique_ptr<FileBackend>(
      new FileBackend(std::move(file->fd), o.path, *size, block, o.direct_io, o.read_only,
                      o.logical_block_size, zeros, serve_inline, std::move(memory)));
}

BackendFeatures FileBackend::features() const {
  BackendFeatures f;
  // Even with O_DIRECT a completed write may sit in the drive's cache, and
  // the file system's own metadata (e.g. blocks allocated for a sparse
  // image) is only durable after fdatasync: FLUSH must reach us.
  f.volatile_cache = !read_only_;
  f.discard = !read_only_;
  f.write_zeroes = !read_only_;
  // File systems free space in whole blocks; a smaller hole punch only
  // zeroes bytes. Block devices: the logical block size is all we know.
  f.discard_granularity = block_device_ ? 0 : std::max<uint32_t>(4096, logical_block_size_);
  // Whole chunks are what a discard hands back (ChunkedMemory::zero).
  if (memory_) f.discard_granularity = ChunkedMemory::kChunkSize;
  // Blocks are written in place at their offset: a repeated request leaves
  // the file as the first one did.
  return f;
}

std::string FileBackend::io_notes() const {
  if (memory_) return "served inline from the file's mapped pages (the file is on tmpfs)";
  if (!inline_) return {};
  return "served inline by the queue threads (the file is in memory: tmpfs or ramfs)";
}

int FileBackend::check(const IoRequest& req) const noexcept {
  switch (req.op) {
    case IoOp::kRead:
    case IoOp::kFlush:
      break;
    case IoOp::kWrite:
    case IoOp::kDiscard:
    case IoOp::kWriteZeroes:
      // The kernel does not send these to a read-only device; this is the
      // backstop in case it ever does.
      if (read_only_) return -EROFS;
      break;
    default:
      return -EOPNOTSUPP;
  }
  // A FLUSH carries no range: the block layer's flush request has sector -1,
  // which the descriptor passes on.
  if (req.op == IoOp::kFlush) return 0;
  // Written so that it cannot overflow for any offset.
  const uint64_t size = this->size();
  if (req.offset > size || req.length > size - req.offset) return -EINVAL;
  if (req.op == IoOp::kRead || req.op == IoOp::kWrite) {
    if (req.length > static_cast<uint32_t>(INT_MAX)) return -EINVAL;
    const bool copy = memory_ && req.copy_fd >= 0;
    if (req.buffer == nullptr && req.buf_index < 0 && !copy && req.length != 0) return -EINVAL;
  }
  return 0;
}

bool FileBackend::fallocate_unsupported(IoOp op) const noexcept {
  const auto& flag = op == IoOp::kDiscard ? no_punch_hole_ : no_zero_range_;
  return flag.load(std::memory_order_relaxed);
}

void FileBackend::mark_fallocate_unsupported(IoOp op) noexcept {
  auto& flag = op == IoOp::kDiscard ? no_punch_hole_ : no_zero_range_;
  flag.store(true, std::memory_order_relaxed);
}

namespace {

// On a block device these become a zero-out without fallback (PUNCH_HOLE,
// which is refused unless the device can zero cheaply) and a zero-out that
// keeps the blocks provisioned (ZERO_RANGE).
int fallocate_mode(IoOp op) {
  return op == IoOp::kDiscard ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                              : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
}

}  // namespace

// ---- asynchronous path ----------------------------------------------------

namespace {

// Every backend SQE goes to the registered backing fd and carries its tag and
// step, so that complete() can tell which stage of the request finished.
template <typename Tag>
int queued(io_uring_sqe* sqe, Tag& t, uint16_t tag, uint16_t step) noexcept {
  sqe->flags |= IOSQE_FIXED_FILE;
  sqe->user_data = QueueContext::backend_user_data(tag, step);
  t.step = step;
  return kIoQueued;
}

}  // namespace

Result<void> FileBackend::attach(QueueContext& q) {
  if (q.backend_file_index() < 0) {
    return Error(EINVAL, path_ + ": the queue ring has no fixed file for the backend");
  }
  auto state = std::unique_ptr<QueueState>(new (std::nothrow) QueueState);
  if (state) state->tags.reset(new (std::nothrow) Tag[q.depth()]());
  if (!state || !state->tags) {
    return Error(ENOMEM, path_ + ": allocate state for queue " + num(q.queue_id()));
  }
  state->depth = q.depth();
  q.backend_data = state.release();
  return {};
}

void FileBackend::detach(QueueContext& q) noexcept {
  delete static_cast<QueueState*>(q.backend_data);
  q.backend_data = nullptr;
}

int FileBackend::submit(QueueContext& q, const IoRequest& req) noexcept {
  auto* s = static_cast<QueueState*>(q.backend_data);
  if (s == nullptr || req.tag >= s->depth) return -EIO;
  // A memory copy, or an fdatasync that has nothing to write back: the
  // queue thread is blocked no longer than a hand-off to a worker would take.
  if (inline_) return handle(req);
  if (const int err = check(req); err != 0) return err;

  Tag& t = s->tags[req.tag];
  t = Tag{static_cast<std::byte*>(req.buffer),
          req.offset,
          req.length,
          0,
          req.flags,
          req.op,
          kStepNone,
          req.buf_index};
  switch (req.op) {
    case IoOp::kRead:
    case IoOp::kWrite:
      if (req.length == 0) return 0;
      return queue_rw(q, t, req.tag);
    case IoOp::kFlush: {
      if (read_only_) return 0;  // nothing of ours can be dirty
      io_uring_sqe* sqe = q.get_sqe();
      if (sqe == nullptr) return -EIO;
      io_uring_prep_fsync(sqe, q.backend_file_index(), IORING_FSYNC_DATASYNC);
      return queued(sqe, t, req.tag, kStepSync);
    }
    case IoOp::kDiscard:
    case IoOp::kWriteZeroes:
      if (req.length == 0) return 0;
      if (fallocate_unsupported(req.op)) return queue_zero_write(q, t, req.tag);
      return queue_fallocate(q, t, req.tag);
  }
  return -EOPNOTSUPP;
}

int FileBackend::queue_rw(QueueContext& q, Tag& t, uint16_t tag) noexcept {
  io_uring_sqe* sqe = q.get_sqe();
  if (sqe == nullptr) return -EIO;
  const int file = q.backend_file_index();
  const uint32_t rest = t.length - t.done;
  const uint64_t offset = t.offset + t.done;
  if (t.buf_index >= 0) {
    // The request's own pages: a fixed buffer whose addresses start at 0,
    // so the address is the offset into the request.
    void* at = reinterpret_cast<void*>(static_cast<uintptr_t>(t.done));
    const auto index = static_cast<int>(t.buf_index);
    if (t.op == IoOp::kRead) {
      io_uring_prep_read_fixed(sqe, file, at, rest, offset, index);
    } else {
      io_uring_prep_write_fixed(sqe, file, at, rest, offset, index);
    }
  } else if (t.op == IoOp::kRead) {
    io_uring_prep_read(sqe, file, t.buffer + t.done, rest, offset);
  } else {
    io_uring_prep_write(sqe, file, t.buffer + t.done, rest, offset);
  }
  if (t.op == IoOp::kWrite && (t.flags & uapi::kIoFlagFua)) sqe->rw_flags = RWF_DSYNC;
  return queued(sqe, t, tag, kStepRw);
}

int FileBackend::queue_fallocate(QueueContext& q, Tag& t, uint16_t tag) noexcept {
  io_uring_sqe* sqe = q.get_sqe();
  if (sqe == nullptr) return -EIO;
  io_uring_prep_fallocate(sqe, q.backend_file_index(), fallocate_mode(t.op),
                          static_cast<off_t>(t.offset), static_cast<off_t>(t.length));
  return queued(sqe, t, tag, kStepFallocate);
}

int FileBackend::queue_zero_write(QueueContext& q, Tag& t, uint16_t tag) noexcept {
  io_uring_sqe* sqe = q.get_sqe();
  if (sqe == nullptr) return -EIO;
  // One chunk at a time: the ring has room for one backend SQE per tag.
  const uint32_t chunk = std::min(t.length - t.done, kZeroChunk);
  io_uring_prep_write(sqe, q.backend_file_index(), zeros_, chunk, t.offset + t.done);
  return queued(sqe, t, tag, kStepZeroWrite);
}

int FileBackend::complete(QueueContext& q, const io_uring_cqe& cqe) noexcept {
  auto* s = static_cast<QueueState*>(q.backend_data);
  const uint16_t tag = QueueContext::tag_of(cqe.user_data);
  if (s == nullptr || tag >= s->depth) return -EIO;
  Tag& t = s->tags[tag];
  if (QueueContext::cookie_of(cqe.user_data) != t.step) return -EIO;
  const int res = cqe.res;

  switch (t.step) {
    case kStepRw:
    case kStepZeroWrite: {
      if (res < 0) return res;
      // 0 means end of file: the file shrank under us (or the device did).
      // Retrying would spin; the request cannot be served.
      if (res == 0 || static_cast<uint32_t>(res) > t.length - t.done) return -EIO;
      t.done += static_cast<uint32_t>(res);
      if (t.done < t.length) {
        return t.step == kStepRw ? queue_rw(q, t, tag) : queue_zero_write(q, t, tag);
      }
      return t.step == kStepRw ? static_cast<int>(t.length) : 0;
    }
    case kStepSync:
      return res < 0 ? res : 0;
    case kStepFallocate:
      if (res == -EOPNOTSUPP) {
        mark_fallocate_unsupported(t.op);
        return queue_zero_write(q, t, tag);
      }
      return res < 0 ? res : 0;
    default:
      return -EIO;
  }
}

// ---- synchronous path -----------------------------------------------------

int FileBackend::handle(const IoRequest& req) noexcept {
  if (const int err = check(req); err != 0) return err;
  switch (req.op) {
    case IoOp::kRead:
    case IoOp::kWrite:
      if (req.length == 0) return 0;
      if (memory_) return memory_->transfer(req);
      // A fixed buffer index is only for submit(); this path needs memory.
      if (req.buffer == nullptr) return -EINVAL;
      return sync_rw(req);
    case IoOp::kFlush:
      if (read_only_) return 0;
      if (memory_ && touch() != 0) return -errno;
      return ::fdatasync(fd_.get()) == 0 ? 0 : -errno;
    case IoOp::kDiscard:
    case IoOp::kWriteZeroes:
      if (req.length == 0) return 0;
      // NOUNMAP (keep the range provisioned) means nothing on tmpfs, which
      // allocates on demand anyway.
      if (memory_) return memory_->zero(req.offset, req.length, size());
      return sync_zero(req);
  }
  return -EOPNOTSUPP;
}

int FileBackend::sync_rw(const IoRequest& req) noexcept {
  auto* buf = static_cast<std::byte*>(req.buffer);
  const bool fua = (req.flags & uapi::kIoFlagFua) != 0;
  // -EIO when the file ends before the request does.
  const int r = io_all(req.length, [&](size_t done) -> ssize_t {
    const size_t rest = req.length - done;
    const auto offset = static_cast<off_t>(req.offset + done);
    if (req.op == IoOp::kRead) return ::pread(fd_.get(), buf + done, rest, offset);
    if (fua) {
      iovec iov{buf + done, rest};
      return ::pwritev2(fd_.get(), &iov, 1, offset, RWF_DSYNC);
    }
    return ::pwrite(fd_.get(), buf + done, rest, offset);
  });
  return r < 0 ? r : static_cast<int>(req.length);
}

int FileBackend::sync_zero(const IoRequest& req) noexcept {
  if (!fallocate_unsupported(req.op)) {
    if (::fallocate(fd_.get(), fallocate_mode(req.op), static_cast<off_t>(req.offset),
                    static_cast<off_t>(req.length)) == 0) {
      return 0;
    }
    if (errno != EOPNOTSUPP) return -errno;
    mark_fallocate_unsupported(req.op);
  }
  return sync_zero_write(req.offset, req.length);
}

int FileBackend::sync_zero_write(uint64_t offset, uint64_t length) noexcept {
  return io_all(length, [&](size_t done) {
    const size_t chunk = std::min<uint64_t>(length - done, kZeroChunk);
    return ::pwrite(fd_.get(), zeros_, chunk, static_cast<off_t>(offset + done));
  });
}

int FileBackend::touch() noexcept {
  // Writes through a shared mapping update the file's mtime only when they
  // fault a page in, not when they land on a page already mapped; tools
  // that look for changed files by mtime (backups, rsync) must still see a
  // change once the device flushed it.
  const timespec times[2] = {{0, UTIME_OMIT}, {0, UTIME_NOW}};
  return ::futimens(fd_.get(), times);
}

Result<void> FileBackend::sync() {
  if (read_only_) return {};
  if (memory_ && touch() != 0) return errno_error("set the mtime of " + path_);
  if (::fdatasync(fd_.get()) != 0) return errno_error("fdatasync");
  return {};
}

Result<void> FileBackend::check_resize(uint64_t bytes, bool force) const {
  if (block_device_) {
    return Error(EOPNOTSUPP, "the backing block device " + path_ +
                                 " has a size of its own, which ublkd does not change");
  }
  if (read_only_) return Error(EROFS, "the device is read-only");
  if (bytes == 0 || bytes % logical_block_size_ != 0) {
    return Error(EINVAL, num(bytes) + " bytes is not a positive multiple of logical_block_size " +
                             num(logical_block_size_));
  }
  if (bytes > static_cast<uint64_t>(std::numeric_limits<off_t>::max()))
    return Error(EINVAL, "size " + num(bytes) + " is too large");
  if (memory_) {
    if (auto r = ChunkedMemory::check_length(bytes); !r) return r;
  }
  const uint64_t size = this->size();
  if (bytes >= size || force) return {};
  // Allocated blocks count as written; a file system without SEEK_DATA
  // reports all of the file as data.
  const off_t data = ::lseek(fd_.get(), static_cast<off_t>(bytes), SEEK_DATA);
  if (data < 0 && errno != ENXIO) return errno_error("find data in " + path_);
  if (data >= 0 && static_cast<uint64_t>(data) < size) {
    return Error(ENOTEMPTY, "data is written at byte " + num(static_cast<uint64_t>(data)) +
                                " of " + path_ + ", beyond the new size " + num(bytes));
  }
  return {};
}

Result<void> FileBackend::resize(uint64_t bytes) {
  if (auto r = check_resize(bytes, /*force=*/true); !r) return r;
  // Requests are checked against size_: it covers the file only.
  const uint64_t size = this->size();
  const bool shrink = bytes < size;
  if (shrink) size_.store(bytes, std::memory_order_release);
  // Mapped before the file grows, so that no request ever finds the device
  // longer than the mapping.
  if (memory_ && !shrink) {
    if (auto r = memory_->cover(bytes); !r) return r.error().wrap(path_);
  }
  if (::ftruncate(fd_.get(), static_cast<off_t>(bytes)) != 0)
    return errno_error("resize " + path_ + " to " + num(bytes) + " bytes");
  // The new length must survive a crash: a recovery checks it.
  if (::fsync(fd_.get()) != 0) return errno_error("fsync " + path_);
  if (memory_ && shrink) memory_->forget(bytes, size);
  if (!shrink) size_.store(bytes, std::memory_order_release);
  return {};
}

}  // namespace ublkd
