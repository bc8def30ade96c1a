#include "backend/mem_backend.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/sanitizers.h"
#include "copy_fd.h"

using ublkd::IoOp;
using ublkd::kThreadSanitizer;
using ublkd::IoRequest;
using ublkd::MemBackend;
using ublkd::UniqueFd;
using ublkd::test::CopyFd;

namespace {

constexpr uint64_t kChunk = MemBackend::kChunkSize;
constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kTiB = 1024 * 1024 * kMiB;

std::unique_ptr<MemBackend> make(uint64_t size) {
  auto r = MemBackend::create(size);
  if (!r) FAIL("create(" << size << "): " << r.error().to_string());
  return std::move(r).value();
}

int submit(MemBackend& b, IoOp op, uint64_t offset, uint64_t length, void* buffer = nullptr) {
  IoRequest req{};
  req.op = op;
  req.offset = offset;
  req.length = static_cast<uint32_t>(length);
  req.buffer = buffer;
  return b.handle(req);
}

// Never zero, and different for every sector and seed, so that misplaced,
// stale and missing data are all told apart from each other.
uint8_t pattern(uint64_t pos, uint32_t seed) {
  uint64_t x = (pos + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t{seed} << 32 | seed);
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 32;
  return static_cast<uint8_t>(1 + x % 255);
}

std::vector<uint8_t> make_data(uint64_t offset, uint64_t length, uint32_t seed) {
  std::vector<uint8_t> v(length);
  for (uint64_t i = 0; i < length; ++i) v[i] = pattern(offset + i, seed);
  return v;
}

void write_pattern(MemBackend& b, uint64_t offset, uint64_t length, uint32_t seed) {
  auto data = make_data(offset, length, seed);
  REQUIRE(submit(b, IoOp::kWrite, offset, length, data.data()) == static_cast<int>(length));
}

std::vector<uint8_t> read_back(MemBackend& b, uint64_t offset, uint64_t length) {
  // Pre-filled so that a read which leaves bytes alone is noticed.
  std::vector<uint8_t> v(length, 0xA5);
  REQUIRE(submit(b, IoOp::kRead, offset, length, v.data()) == static_cast<int>(length));
  return v;
}

// Offset of the first differing byte, or -1; reported instead of comparing
// megabytes element by element.
int64_t first_diff(const std::vector<uint8_t>& got, const std::vector<uint8_t>& want) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) return static_cast<int64_t>(i);
  }
  return -1;
}

int64_t first_nonzero(const std::vector<uint8_t>& v) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] != 0) return static_cast<int64_t>(i);
  }
  return -1;
}

void require_pattern(MemBackend& b, uint64_t offset, uint64_t length, uint32_t seed) {
  INFO("pattern " << seed << " at " << offset << "+" << length);
  REQUIRE(first_diff(read_back(b, offset, length), make_data(offset, length, seed)) == -1);
}

void require_zeros(MemBackend& b, uint64_t offset, uint64_t length) {
  INFO("zeros at " << offset << "+" << length);
  REQUIRE(first_nonzero(read_back(b, offset, length)) == -1);
}

// Bytes of memory the memfd holds.
uint64_t allocated(const MemBackend& b) {
  struct stat st {};
  REQUIRE(::fstat(b.memfd(), &st) == 0);
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

// A field of /proc/self/status in bytes.
uint64_t proc_status(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string key;
  while (in >> key) {
    if (key == field + ":") {
      uint64_t kib = 0;
      in >> kib;
      return kib * kKiB;
    }
    std::string rest;
    std::getline(in, rest);
  }
  FAIL("no " << field << " in /proc/self/status");
  return 0;
}

// A random run of whole sectors of a device of `sectors`, up to three chunks
// long: {offset, length} in bytes.
std::pair<uint64_t, uint64_t> random_range(std::mt19937_64& rng, uint64_t sectors) {
  const uint64_t first = rng() % sectors;
  const uint64_t count = 1 + rng() % std::min<uint64_t>(sectors - first, 3 * kChunk / 512);
  return {first * 512, count * 512};
}

// The backend under test next to a plain copy of what it should contain.
struct Model {
  std::unique_ptr<MemBackend> backend;
  std::vector<uint8_t> expect;

  explicit Model(uint64_t size) : backend(make(size)), expect(size, 0) {}

  void write(uint64_t offset, uint64_t length, uint32_t seed) {
    write_pattern(*backend, offset, length, seed);
    auto data = make_data(offset, length, seed);
    std::memcpy(expect.data() + offset, data.data(), length);
  }
  void zero(IoOp op, uint64_t offset, uint64_t length) {
    REQUIRE(submit(*backend, op, offset, length) == 0);
    std::memset(expect.data() + offset, 0, length);
  }
  void verify() {
    auto got = read_back(*backend, 0, expect.size());
    REQUIRE(first_diff(got, expect) == -1);
  }
};

}  // namespace

TEST_CASE("mem: describes itself", "[mem]") {
  auto b = make(8 * kMiB);
  CHECK(b->type() == "mem");
  CHECK(b->size() == 8 * kMiB);
  auto f = b->features();
  CHECK_FALSE(f.volatile_cache);
  CHECK(f.discard);
  CHECK(f.write_zeroes);
  CHECK(f.discard_granularity == kChunk);
  CHECK(f.discard_granularity % 4096 == 0);

  struct stat st {};
  REQUIRE(::fstat(b->memfd(), &st) == 0);
  CHECK(static_cast<uint64_t>(st.st_size) == 8 * kMiB);
  CHECK((::fcntl(b->memfd(), F_GETFD) & FD_CLOEXEC) != 0);
  // Nobody holding the fd may shrink it under the mapping.
  CHECK((::fcntl(b->memfd(), F_GET_SEALS) & F_SEAL_SHRINK) != 0);
  CHECK(::ftruncate(b->memfd(), 4 * kMiB) != 0);
}

TEST_CASE("mem: invalid sizes are refused", "[mem]") {
  for (uint64_t size :
       {uint64_t{0}, uint64_t{1000}, uint64_t{513}, kMiB + 1, ~uint64_t{0} & ~uint64_t{511}}) {
    INFO("size " << size);
    auto r = MemBackend::create(size);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == EINVAL);
    CHECK(r.error().message().find("mem backend size") != std::string::npos);
  }
  CHECK(MemBackend::create(0).error().message().find("zero") != std::string::npos);
  CHECK(MemBackend::create(1000).error().message().find("multiple of 512") != std::string::npos);
  // Sizes that are not a multiple of the chunk size are fine.
  CHECK(MemBackend::create(512).ok());
  CHECK(MemBackend::create(kChunk + 3 * 512).ok());
}

TEST_CASE("mem: a fresh device reads zeros without allocating", "[mem]") {
  auto b = make(4 * kMiB + 512);
  require_zeros(*b, 0, b->size());
  require_zeros(*b, 512, 3 * 512);
  CHECK(allocated(*b) == 0);
}

TEST_CASE("mem: writes read back at any offset and length", "[mem]") {
  // Deliberately not a multiple of the chunk size: the last chunk is short.
  Model m(6 * kChunk + 3 * 512);
  const uint64_t size = m.expect.size();
  struct Range {
    uint64_t offset, length;
  };
  const Range ranges[] = {
      {0, 512},                               // first sector
      {512, 4096},                            // unaligned inside a chunk
      {kChunk - 512, 1024},                   // straddles a chunk boundary
      {kChunk, kChunk},                       // exactly one chunk
      {2 * kChunk + 1536, 2 * kChunk + 512},  // spans three chunks
      {size - 512, 512},                      // last sector
      {size - kChunk - 1024, kChunk + 1024},  // into the short last chunk
  };
  uint32_t seed = 1;
  for (const auto& r : ranges) {
    m.write(r.offset, r.length, seed);
    require_pattern(*m.backend, r.offset, r.length, seed);
    ++seed;
  }
  m.verify();
  // Reads that are not aligned to what was written.
  auto got = read_back(*m.backend, kChunk - 4096, 3 * 4096);
  std::vector<uint8_t> want(m.expect.begin() + (kChunk - 4096), m.expect.begin() + kChunk + 8192);
  CHECK(first_diff(got, want) == -1);
}

TEST_CASE("mem: discard and write-zeroes zero whole and partial chunks", "[mem]") {
  const IoOp op = GENERATE(IoOp::kDiscard, IoOp::kWriteZeroes);
  INFO("op " << static_cast<int>(op));
  Model m(8 * kChunk);
  m.write(0, 8 * kChunk, 7);

  SECTION("inside one chunk") {
    m.zero(op, kChunk + 4096, 8192);
  }
  SECTION("partial head, whole middle, partial tail") {
    m.zero(op, kChunk / 2, 3 * kChunk);
  }
  SECTION("two partial chunks without a whole one") {
    m.zero(op, kChunk + 512, kChunk);
  }
  SECTION("exactly whole chunks") {
    m.zero(op, 2 * kChunk, 3 * kChunk);
  }
  SECTION("everything") {
    m.zero(op, 0, 8 * kChunk);
  }
  SECTION("never written chunks") {
    m.zero(op, 0, 8 * kChunk);
    m.zero(op, kChunk / 2, 3 * kChunk);
    m.zero(op, 512, 512);
  }
  m.verify();

  // A later partial write into a zeroed chunk must not bring back old data
  // in the rest of it.
  m.write(2 * kChunk + 4096, 512, 8);
  m.write(kChunk / 2 + 512, 512, 9);
  m.verify();
}

TEST_CASE("mem: discard and write-zeroes release memory", "[mem]") {
  const IoOp op = GENERATE(IoOp::kDiscard, IoOp::kWriteZeroes);
  INFO("op " << static_cast<int>(op));
  auto b = make(4 * kMiB);
  write_pattern(*b, 0, 2 * kMiB, 3);
  REQUIRE(allocated(*b) >= 2 * kMiB);

  // Only the whole chunks in the middle can be released; the partial ones at
  // either end are zeroed in place.
  REQUIRE(submit(*b, op, 4096, kMiB) == 0);
  CHECK(allocated(*b) <= 2 * kMiB - kMiB + 2 * kChunk);
  CHECK(allocated(*b) >= kMiB);
  require_pattern(*b, 0, 4096, 3);
  require_zeros(*b, 4096, kMiB);
  require_pattern(*b, kMiB + 4096, kMiB - 4096, 3);

  REQUIRE(submit(*b, op, 0, b->size()) == 0);
  CHECK(allocated(*b) == 0);
  require_zeros(*b, 0, b->size());
  CHECK(allocated(*b) == 0);

  // Zeroing parts of chunks that were never written must not fault them in.
  REQUIRE(submit(*b, op, 512, 4096) == 0);
  REQUIRE(submit(*b, op, kChunk - 512, 1024) == 0);
  CHECK(allocated(*b) == 0);
}

TEST_CASE("mem: the short last chunk is released too", "[mem]") {
  const IoOp op = GENERATE(IoOp::kDiscard, IoOp::kWriteZeroes);
  INFO("op " << static_cast<int>(op));
  const uint64_t size = 4 * kChunk + 1024;
  auto b = make(size);
  write_pattern(*b, 0, size, 4);
  REQUIRE(submit(*b, op, kChunk, size - kChunk) == 0);
  CHECK(allocated(*b) == kChunk);
  require_pattern(*b, 0, kChunk, 4);
  require_zeros(*b, kChunk, size - kChunk);
}

TEST_CASE("mem: randomised operations match a plain copy", "[mem]") {
  Model m(3 * kMiB + 5 * 512);
  const uint64_t sectors = m.expect.size() / 512;
  std::mt19937_64 rng(12345);
  for (uint32_t i = 0; i < 400; ++i) {
    const auto [offset, length] = random_range(rng, sectors);
    INFO("step " << i << " at " << offset << "+" << length);
    switch (rng() % 4) {
      case 0:
      case 1:
        m.write(offset, length, i);
        break;
      case 2:
        m.zero(IoOp::kDiscard, offset, length);
        break;
      default:
        m.zero(IoOp::kWriteZeroes, offset, length);
        break;
    }
    auto got = read_back(*m.backend, offset, length);
    std::vector<uint8_t> want(m.expect.begin() + offset, m.expect.begin() + offset + length);
    REQUIRE(first_diff(got, want) == -1);
    if (i % 50 == 0) m.verify();
  }
  m.verify();
}

TEST_CASE("mem: a 1 TiB device stays sparse", "[mem]") {
  const uint64_t shmem_before = proc_status("RssShmem");
  const uint64_t anon_before = proc_status("RssAnon");
  auto b = make(kTiB);

  // A few MiB at both ends, through one reused 4 KiB buffer: the test itself
  // must not allocate (sanitizers quarantine freed memory, which shows up as
  // anonymous RSS).
  std::vector<uint8_t> buf(4096);
  auto write_at = [&](uint64_t off, uint32_t seed) {
    for (uint64_t i = 0; i < buf.size(); ++i) buf[i] = pattern(off + i, seed);
    return submit(*b, IoOp::kWrite, off, buf.size(), buf.data());
  };
  for (uint64_t off = 0; off < 2 * kMiB; off += buf.size()) REQUIRE(write_at(off, 1) == 4096);
  for (uint64_t off = kTiB - 2 * kMiB; off < kTiB; off += buf.size()) {
    REQUIRE(write_at(off, 2) == 4096);
  }

  CHECK(allocated(*b) == 4 * kMiB);
  CHECK(proc_status("RssShmem") - shmem_before <= 6 * kMiB);
  // The chunk bitmap of 1 TiB is 2 MiB; it must not be committed up front.
  // (ThreadSanitizer allocates shadow memory for every page we touch.)
  if (!kThreadSanitizer) CHECK(proc_status("RssAnon") < anon_before + kMiB);

  require_pattern(*b, 0, 4096, 1);
  require_pattern(*b, 2 * kMiB - 4096, 4096, 1);
  require_pattern(*b, kTiB - 4096, 4096, 2);
  require_zeros(*b, 2 * kMiB, 4096);

  // Reading never written space costs nothing.
  const uint64_t before = allocated(*b);
  require_zeros(*b, kTiB / 2, kMiB);
  require_zeros(*b, kTiB - 3 * kMiB, kMiB);
  CHECK(allocated(*b) == before);

  // Discarding a large range, most of which was never written, is cheap and
  // gives the end of the device back.
  REQUIRE(submit(*b, IoOp::kDiscard, kTiB - 1024 * kMiB, 1024 * kMiB) == 0);
  CHECK(allocated(*b) == 2 * kMiB);
  require_zeros(*b, kTiB - 4096, 4096);
  require_pattern(*b, 0, 4096, 1);
}

TEST_CASE("mem: adopt() sees the data of an earlier backend", "[mem]") {
  const uint64_t size = 16 * kMiB + 512;
  UniqueFd kept;
  {
    auto b = make(size);
    write_pattern(*b, kChunk + 512, 1024, 1);    // partial chunk
    write_pattern(*b, 5 * kMiB, 3 * kChunk, 2);  // whole chunks
    write_pattern(*b, size - 512, 512, 3);       // the short last chunk
    write_pattern(*b, 8 * kMiB, kChunk, 4);
    REQUIRE(submit(*b, IoOp::kDiscard, 8 * kMiB, kChunk) == 0);
    kept = UniqueFd(::fcntl(b->memfd(), F_DUPFD_CLOEXEC, 0));
    REQUIRE(kept.valid());
  }

  auto r = MemBackend::adopt(std::move(kept), size);
  if (!r) FAIL(r.error().to_string());
  auto& b = *r.value();
  CHECK(b.size() == size);
  require_pattern(b, kChunk + 512, 1024, 1);
  require_zeros(b, kChunk, 512);
  require_zeros(b, kChunk + 1536, kChunk - 1536);
  require_pattern(b, 5 * kMiB, 3 * kChunk, 2);
  require_pattern(b, size - 512, 512, 3);
  require_zeros(b, 8 * kMiB, kChunk);

  // Chunks without data must come back as unwritten: reading them does not
  // fault pages in.
  const uint64_t before = allocated(b);
  require_zeros(b, 10 * kMiB, 4 * kMiB);
  require_zeros(b, 0, kChunk);
  CHECK(allocated(b) == before);

  // ...and chunks with data as written: discarding them frees memory.
  REQUIRE(submit(b, IoOp::kDiscard, 5 * kMiB, 3 * kChunk) == 0);
  CHECK(allocated(b) < before);
  require_zeros(b, 5 * kMiB, 3 * kChunk);
  require_pattern(b, kChunk + 512, 1024, 1);
}

TEST_CASE("mem: adopt() refuses what it cannot use", "[mem]") {
  auto b = make(4 * kMiB);
  auto dup = [&] { return UniqueFd(::fcntl(b->memfd(), F_DUPFD_CLOEXEC, 0)); };

  auto wrong_size = MemBackend::adopt(dup(), 8 * kMiB);
  REQUIRE_FALSE(wrong_size.ok());
  CHECK(wrong_size.error().code() == EINVAL);
  CHECK(wrong_size.error().message().find("fewer than") != std::string::npos);

  auto no_fd = MemBackend::adopt(UniqueFd(), 4 * kMiB);
  REQUIRE_FALSE(no_fd.ok());
  CHECK(no_fd.error().code() == EBADF);

  UniqueFd pipe_read, pipe_write;
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  pipe_read.reset(p[0]);
  pipe_write.reset(p[1]);
  auto not_memfd = MemBackend::adopt(std::move(pipe_read), 4 * kMiB);
  REQUIRE_FALSE(not_memfd.ok());
  CHECK(not_memfd.error().code() == EINVAL);

  CHECK_FALSE(MemBackend::adopt(dup(), 0).ok());
  CHECK(MemBackend::adopt(dup(), 4 * kMiB).ok());
}

TEST_CASE("mem: requests past the end are refused", "[mem]") {
  const uint64_t size = 2 * kMiB;
  auto b = make(size);
  write_pattern(*b, size - kChunk, kChunk, 5);
  std::vector<uint8_t> buf(2 * 4096, 0x11);

  for (IoOp op : {IoOp::kRead, IoOp::kWrite, IoOp::kDiscard, IoOp::kWriteZeroes}) {
    INFO("op " << static_cast<int>(op));
    CHECK(submit(*b, op, size - 4096, 8192, buf.data()) == -EINVAL);
    CHECK(submit(*b, op, size, 512, buf.data()) == -EINVAL);
    CHECK(submit(*b, op, size + kChunk, 512, buf.data()) == -EINVAL);
    // offset + length wraps around.
    CHECK(submit(*b, op, ~uint64_t{0} - 511, 1024, buf.data()) == -EINVAL);
  }
  // Nothing was touched by the refused requests.
  require_pattern(*b, size - kChunk, kChunk, 5);
  CHECK(std::all_of(buf.begin(), buf.end(), [](uint8_t c) { return c == 0x11; }));

  // The last sector itself is in range.
  CHECK(submit(*b, IoOp::kRead, size - 512, 512, buf.data()) == 512);
  CHECK(submit(*b, IoOp::kRead, 0, 512, nullptr) == -EINVAL);
  CHECK(submit(*b, IoOp::kFlush, 0, 0) == 0);
  CHECK(submit(*b, static_cast<IoOp>(4), 0, 512, buf.data()) == -EOPNOTSUPP);
}

TEST_CASE("mem: concurrent queues do not disturb each other", "[mem]") {
  constexpr int kThreads = 4;
  const uint64_t size = 8 * kMiB;
  auto b = make(size);
  const uint64_t sectors = size / 512;

  SECTION("interleaved sector writers") {
    // Every chunk and every bitmap word is shared by all threads.
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        std::vector<uint8_t> data(512);
        for (uint64_t s = static_cast<uint64_t>(t); s < sectors; s += kThreads) {
          for (uint64_t i = 0; i < 512; ++i) data[i] = pattern(s * 512 + i, 11);
          if (submit(*b, IoOp::kWrite, s * 512, 512, data.data()) != 512) std::abort();
        }
      });
    }
    for (auto& th : threads) th.join();
    require_pattern(*b, 0, size, 11);
  }

  SECTION("bits of one bitmap word set and cleared from every thread") {
    // The first 64 chunks share one bitmap word. Each thread writes a sector
    // into one of its chunks, reads it straight back and discards the chunk
    // again; a lost update of the word by another thread shows up as zeros
    // where the sector should be.
    constexpr int kRounds = 100;
    constexpr uint64_t kChunks = 64;
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        std::vector<uint8_t> data(512), got(512);
        for (int round = 0; round <= kRounds; ++round) {
          for (uint64_t c = static_cast<uint64_t>(t); c < kChunks; c += kThreads) {
            const uint64_t off = c * kChunk + (round % (kChunk / 512)) * 512;
            for (uint64_t i = 0; i < 512; ++i) data[i] = pattern(off + i, round);
            if (submit(*b, IoOp::kWrite, off, 512, data.data()) != 512) ++failures;
            if (submit(*b, IoOp::kRead, off, 512, got.data()) != 512 || got != data) ++failures;
            if (round == kRounds) continue;  // leave the last one in place
            if (submit(*b, IoOp::kDiscard, c * kChunk, kChunk) != 0) ++failures;
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    CHECK(failures == 0);
    const uint64_t last = (kRounds % (kChunk / 512)) * 512;
    for (uint64_t c = 0; c < kChunks; ++c) {
      require_zeros(*b, c * kChunk, last);
      require_pattern(*b, c * kChunk + last, 512, kRounds);
      require_zeros(*b, c * kChunk + last + 512, kChunk - last - 512);
    }
  }

  SECTION("writers next to discarders") {
    // Even chunks are written by two threads, odd chunks are written and
    // discarded over and over by two others: the bits of all of them live in
    // the same bitmap words, so a lost bit update shows up as zeros or stale
    // data in an even chunk.
    constexpr int kRounds = 8;
    const uint64_t chunks = size / kChunk;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        std::vector<uint8_t> data(kChunk);
        const bool writer = t < 2;
        for (int round = 0; round < kRounds; ++round) {
          for (uint64_t c = (writer ? 0 : 1) + 2 * static_cast<uint64_t>(t % 2); c < chunks;
               c += 4) {
            const uint64_t off = c * kChunk;
            for (uint64_t i = 0; i < kChunk; ++i) data[i] = pattern(off + i, 20 + round);
            if (submit(*b, IoOp::kWrite, off, kChunk, data.data()) != static_cast<int>(kChunk)) {
              std::abort();
            }
            if (!writer && submit(*b, IoOp::kDiscard, off, kChunk) != 0) std::abort();
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    for (uint64_t c = 0; c < chunks; ++c) {
      if (c % 2 == 0) {
        require_pattern(*b, c * kChunk, kChunk, 20 + kRounds - 1);
      } else {
        require_zeros(*b, c * kChunk, kChunk);
      }
    }
    // Only the even half is still held.
    CHECK(allocated(*b) == size / 2);
  }
}

TEST_CASE("mem: user copy serves the same data as the buffer path", "[mem]") {
  CopyFd copy;
  REQUIRE(copy.fd);
  Model m(3 * kMiB + 5 * 512);
  CHECK(m.backend->user_copy());
  const uint64_t sectors = m.expect.size() / 512;
  std::mt19937_64 rng(777);
  for (uint32_t i = 0; i < 300; ++i) {
    const auto [offset, length] = random_range(rng, sectors);
    INFO("step " << i << " at " << offset << "+" << length);
    switch (rng() % 4) {
      case 0: {  // a WRITE whose data the backend reads from the fd
        auto data = make_data(offset, length, i);
        copy.put(data);
        REQUIRE(copy.io(*m.backend, IoOp::kWrite, offset, length) == static_cast<int>(length));
        std::memcpy(m.expect.data() + offset, data.data(), length);
        break;
      }
      case 1:
        m.write(offset, length, i);
        break;
      default:
        m.zero(IoOp::kDiscard, offset, length);
        break;
    }
    // A READ the backend writes to the fd, over bytes that must all change:
    // holes included, which come back as zeros.
    copy.put(std::vector<uint8_t>(length, 0xA5));
    REQUIRE(copy.io(*m.backend, IoOp::kRead, offset, length) == static_cast<int>(length));
    std::vector<uint8_t> want(m.expect.begin() + offset, m.expect.begin() + offset + length);
    REQUIRE(first_diff(copy.get(length), want) == -1);
  }
  m.verify();
}

TEST_CASE("mem: user copy reports a failed copy instead of success", "[mem]") {
  auto b = make(1 * kMiB);
  CopyFd copy;
  REQUIRE(copy.fd);
  // The fd ends before the request's data would: pread finds nothing.
  CHECK(copy.io(*b, IoOp::kWrite, 0, 8 * kKiB) == -EIO);
  IoRequest req{};
  req.op = IoOp::kRead;
  req.length = 4096;
  req.copy_fd = 12345;  // not open
  CHECK(b->handle(req) == -EBADF);
  req.copy_fd = -1;  // neither a buffer nor a copy fd
  CHECK(b->handle(req) == -EINVAL);
}

TEST_CASE("mem: a live grow keeps the data and adds zeros, on both copy paths", "[mem][resize]") {
  auto b = make(4 * kMiB);
  write_pattern(*b, 1 * kMiB, 3 * kChunk, 1);
  write_pattern(*b, 4 * kMiB - 512, 512, 2);
  REQUIRE(b->check_resize(64 * kMiB, false).ok());
  REQUIRE(b->resize(64 * kMiB).ok());
  CHECK(b->size() == 64 * kMiB);
  require_pattern(*b, 1 * kMiB, 3 * kChunk, 1);
  require_pattern(*b, 4 * kMiB - 512, 512, 2);
  require_zeros(*b, 4 * kMiB, 60 * kMiB);
  // The new range through the buffer path and through the mapping (user
  // copy), which the grow had to map anew.
  write_pattern(*b, 40 * kMiB, kChunk + 512, 3);
  CopyFd copy;
  auto data = make_data(63 * kMiB, 2 * kChunk, 4);
  copy.put(data);
  REQUIRE(copy.io(*b, IoOp::kWrite, 63 * kMiB, 2 * kChunk) == static_cast<int>(2 * kChunk));
  require_pattern(*b, 63 * kMiB, 2 * kChunk, 4);
  REQUIRE(copy.io(*b, IoOp::kRead, 40 * kMiB, kChunk + 512) == static_cast<int>(kChunk + 512));
  CHECK(first_diff(copy.get(kChunk + 512), make_data(40 * kMiB, kChunk + 512, 3)) == -1);
  CHECK(submit(*b, IoOp::kRead, 64 * kMiB, 512) == -EINVAL);
}

TEST_CASE("mem: a shrink refuses to drop written data unless forced", "[mem][resize]") {
  auto b = make(8 * kMiB);
  write_pattern(*b, 1 * kMiB, 4096, 1);
  write_pattern(*b, 5 * kMiB + 4096, 4096, 2);

  // Above the last written byte: allowed without force.
  CHECK(b->check_resize(6 * kMiB, false).ok());
  auto refused = b->check_resize(4 * kMiB, false);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code() == ENOTEMPTY);
  CHECK_THAT(refused.error().message(),
             Catch::Contains("data is written at byte " + std::to_string(5 * kMiB + 4096)));
  CHECK(b->size() == 8 * kMiB);
  require_pattern(*b, 5 * kMiB + 4096, 4096, 2);

  const uint64_t before = allocated(*b);
  REQUIRE(b->check_resize(4 * kMiB, true).ok());
  REQUIRE(b->resize(4 * kMiB).ok());
  CHECK(b->size() == 4 * kMiB);
  CHECK(allocated(*b) < before);
  CHECK(submit(*b, IoOp::kRead, 5 * kMiB, 512) == -EINVAL);
  require_pattern(*b, 1 * kMiB, 4096, 1);

  // Grown again, what the shrink dropped reads as zeros.
  REQUIRE(b->resize(8 * kMiB).ok());
  require_zeros(*b, 4 * kMiB, 4 * kMiB);
  require_pattern(*b, 1 * kMiB, 4096, 1);

  CHECK(b->check_resize(0, true).error().code() == EINVAL);
  CHECK(b->check_resize(8 * kMiB + 100, true).error().code() == EINVAL);
  CHECK(b->check_resize(MemBackend::kMaxSize + kMiB, true).error().code() == EINVAL);
}

TEST_CASE("mem: a shrink inside a chunk zeroes the rest of it", "[mem][resize]") {
  auto b = make(1 * kMiB);
  write_pattern(*b, 0, 2 * kChunk, 1);
  REQUIRE(b->resize(kChunk + 4096).ok());
  require_pattern(*b, 0, kChunk + 4096, 1);
  REQUIRE(b->resize(1 * kMiB).ok());
  require_pattern(*b, 0, kChunk + 4096, 1);
  require_zeros(*b, kChunk + 4096, kChunk - 4096);
}

TEST_CASE("mem: adopt() serves a memfd longer than the device, the rest punched out",
          "[mem][resize]") {
  UniqueFd kept;
  {
    auto b = make(8 * kMiB);
    write_pattern(*b, 1 * kMiB, 4096, 1);
    write_pattern(*b, 6 * kMiB, 4096, 2);
    // A shrink never shortens the memfd: the process "dies" before its
    // storage was cut, so the memfd still holds the old tail.
    kept = UniqueFd(::fcntl(b->memfd(), F_DUPFD_CLOEXEC, 0));
  }
  auto r = MemBackend::adopt(std::move(kept), 4 * kMiB);
  if (!r) FAIL(r.error().to_string());
  auto& b = *r.value();
  CHECK(b.size() == 4 * kMiB);
  require_pattern(b, 1 * kMiB, 4096, 1);
  REQUIRE(b.resize(8 * kMiB).ok());
  require_zeros(b, 4 * kMiB, 4 * kMiB);
}
