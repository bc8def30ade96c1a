#include "backend/null_backend.h"

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdint>
#include <vector>

using ublkd::IoOp;
using ublkd::IoRequest;
using ublkd::NullBackend;

namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;

IoRequest request(IoOp op, uint64_t offset, uint32_t length, void* buffer = nullptr) {
  IoRequest req{};
  req.op = op;
  req.offset = offset;
  req.length = length;
  req.buffer = buffer;
  return req;
}

}  // namespace

TEST_CASE("null backend checks its size", "[null]") {
  auto r = NullBackend::create(0);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == EINVAL);
  r = NullBackend::create(1000);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == EINVAL);
  CHECK_THAT(r.error().message(), Catch::Contains("1000"));

  r = NullBackend::create(uint64_t{1} << 50);  // costs nothing, whatever the size
  REQUIRE(r.ok());
  CHECK(r.value()->size() == uint64_t{1} << 50);
  CHECK(r.value()->type() == "null");
}

TEST_CASE("null backend advertises discard and write zeroes but no cache", "[null]") {
  auto b = std::move(NullBackend::create(kGiB)).value();
  const auto f = b->features();
  CHECK_FALSE(f.volatile_cache);
  CHECK(f.discard);
  CHECK(f.write_zeroes);
  CHECK(b->attach_fd() == -1);  // synchronous: nothing to register
}

TEST_CASE("null backend completes every request without touching data", "[null]") {
  auto b = std::move(NullBackend::create(kGiB)).value();
  std::vector<uint8_t> buf(128 * 1024, 0xA5);

  CHECK(b->handle(request(IoOp::kRead, 0, 4096, buf.data())) == 4096);
  CHECK(b->handle(request(IoOp::kRead, kGiB - 131072, 131072, buf.data())) == 131072);
  CHECK(b->handle(request(IoOp::kWrite, 512, 512, buf.data())) == 512);
  CHECK(b->handle(request(IoOp::kFlush, 0, 0)) == 0);
  // The kernel's flush request has sector -1.
  CHECK(b->handle(request(IoOp::kFlush, ~uint64_t{0} << 9, 0)) == 0);
  CHECK(b->handle(request(IoOp::kDiscard, 0, 1u << 30)) == 0);
  CHECK(b->handle(request(IoOp::kWriteZeroes, 4096, 1u << 20)) == 0);
  CHECK(b->handle(request(IoOp::kRead, 0, 0, nullptr)) == 0);
  for (uint8_t byte : buf) REQUIRE(byte == 0xA5);

  // The queue worker's entry point ends up in the same place.
  struct NoQueue final : ublkd::QueueContext {
    uint16_t queue_id() const override { return 0; }
    uint16_t depth() const override { return 1; }
    io_uring_sqe* get_sqe() override { return nullptr; }
    int backend_file_index() const override { return -1; }
    void finish(uint16_t, int) override { FAIL("finish() from the null backend"); }
    bool waiting(uint16_t) const override { return false; }
    void set_deadline(uint16_t, std::chrono::steady_clock::time_point) override {
      FAIL("set_deadline() from the null backend");
    }
  } q;
  REQUIRE(b->attach(q).ok());
  CHECK(b->submit(q, request(IoOp::kRead, 8192, 4096, buf.data())) == 4096);
  CHECK(b->submit(q, request(IoOp::kWriteZeroes, 8192, 4096)) == 0);
  b->detach(q);
}

TEST_CASE("null backend refuses requests past the end and unknown operations", "[null]") {
  auto b = std::move(NullBackend::create(kGiB)).value();
  std::vector<uint8_t> buf(8192);
  CHECK(b->handle(request(IoOp::kRead, kGiB, 4096, buf.data())) == -EINVAL);
  CHECK(b->handle(request(IoOp::kWrite, kGiB - 4096, 8192, buf.data())) == -EINVAL);
  CHECK(b->handle(request(IoOp::kDiscard, UINT64_MAX - 511, 4096)) == -EINVAL);
  CHECK(b->handle(request(IoOp::kWriteZeroes, kGiB - 512, 1024)) == -EINVAL);
  CHECK(b->handle(request(static_cast<IoOp>(4), 0, 4096, buf.data())) == -EOPNOTSUPP);
  CHECK(b->handle(request(static_cast<IoOp>(200), 0, 4096, buf.data())) == -EOPNOTSUPP);
  // Up to the very end is fine.
  CHECK(b->handle(request(IoOp::kWrite, kGiB - 8192, 8192, buf.data())) == 8192);
}

TEST_CASE("null backend takes any size live", "[null][resize]") {
  auto b = std::move(NullBackend::create(kGiB)).value();
  std::vector<uint8_t> buf(4096);
  REQUIRE(b->check_resize(2 * kGiB, false).ok());
  REQUIRE(b->resize(2 * kGiB).ok());
  CHECK(b->size() == 2 * kGiB);
  CHECK(b->handle(request(IoOp::kWrite, 2 * kGiB - 4096, 4096, buf.data())) == 4096);
  REQUIRE(b->resize(kGiB / 2).ok());
  CHECK(b->handle(request(IoOp::kRead, kGiB / 2, 4096, buf.data())) == -EINVAL);
  CHECK(b->check_resize(1000, true).error().code() == EINVAL);
  CHECK(b->size() == kGiB / 2);
}
