// UBLK_F_BATCH_IO's commands as the queue sends them: element layout, the
// SQEs, and the fetch buffer ring, which is driven here through a real
// io_uring (a pipe read selecting from it) since the host has no ublk.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <vector>

#include "base/unique_fd.h"
#include "queue/batch_commands.h"
#include "uapi/ublk.h"
#include "uring/ring.h"

using namespace ublkd;

namespace {

uapi::BatchIo header_of(const io_uring_sqe& sqe) {
  uapi::BatchIo h{};
  std::memcpy(&h, sqe.cmd, sizeof(h));
  return h;
}

}  // namespace

TEST_CASE("batch commands: elements carry the tag, result and buffer as the kernel reads them",
          "[batch]") {
  SECTION("a device with buffers: 16-byte elements with the address") {
    BatchCommands b(3, 8, /*buf_addr=*/true, /*buf_index=*/false);
    CHECK(b.elem_bytes() == 16);
    CHECK(b.flags() == uapi::kBatchHasBufAddr);
    const uint16_t slot = b.take_slot();
    CHECK(b.add(slot, 5, -5, 0x1234000));
    CHECK(b.add(slot, 7, 4096, 0x5678000));
    CHECK(b.elements(slot) == 2);
    CHECK(b.bytes(slot) == 32);

    io_uring_sqe sqe{};
    b.prep_list(&sqe, uapi::kIoCommitIoCmds, slot);
    CHECK(sqe.opcode == IORING_OP_URING_CMD);
    CHECK(sqe.cmd_op == 0xc0107526);
    CHECK(sqe.fd == 0);
    CHECK((sqe.flags & IOSQE_FIXED_FILE) != 0);
    const uapi::BatchIo h = header_of(sqe);
    CHECK(h.q_id == 3);
    CHECK(h.nr_elem == 2);
    CHECK(h.elem_bytes == 16);
    CHECK(h.flags == uapi::kBatchHasBufAddr);

    const auto* p = reinterpret_cast<const uint8_t*>(sqe.addr);
    uapi::BatchElem e{};
    uint64_t addr = 0;
    std::memcpy(&e, p + 16, sizeof(e));
    std::memcpy(&addr, p + 16 + 8, sizeof(addr));
    CHECK(e.tag == 7);
    CHECK(e.buf_index == 0);
    CHECK(e.result == 4096);
    CHECK(addr == 0x5678000);
    std::memcpy(&e, p, sizeof(e));
    CHECK(e.tag == 5);
    CHECK(e.result == -5);
  }
  SECTION("user copy: 8-byte elements, no address; auto buffer registration: slot = tag") {
    BatchCommands plain(0, 4, false, false);
    CHECK(plain.elem_bytes() == 8);
    CHECK(plain.flags() == 0);
    BatchCommands zc(0, 4, false, true);
    const uint16_t slot = zc.take_slot();
    zc.add(slot, 3, 0, 0xdead);
    io_uring_sqe sqe{};
    zc.prep_list(&sqe, uapi::kIoPrepIoCmds, slot);
    CHECK(sqe.cmd_op == 0xc0107525);
    CHECK(header_of(sqe).elem_bytes == 8);
    uapi::BatchElem e{};
    std::memcpy(&e, reinterpret_cast<const void*>(sqe.addr), sizeof(e));
    CHECK(e.tag == 3);
    CHECK(e.buf_index == 3);
  }
  SECTION("a slot takes at most depth elements") {
    BatchCommands b(0, 2, false, false);
    const uint16_t slot = b.take_slot();
    CHECK(b.add(slot, 0, 0, 0));
    CHECK(b.add(slot, 1, 0, 0));
    CHECK_FALSE(b.add(slot, 1, 0, 0));
    CHECK(b.elements(slot) == 2);
  }
  SECTION("the rest of a list after a refused element goes to a new slot") {
    BatchCommands b(1, 8, true, false);
    const uint16_t slot = b.take_slot();
    for (uint16_t tag = 10; tag < 14; ++tag) CHECK(b.add(slot, tag, tag * 100, tag * 0x1000u));
    // The kernel took 16 bytes: tag 10; it refused tag 11.
    CHECK(b.tag_at(slot, 16 / b.elem_bytes()) == 11);
    const uint16_t rest = b.take_rest(slot, 2);
    CHECK(rest != slot);
    CHECK(b.elements(rest) == 2);
    CHECK(b.tag_at(rest, 0) == 12);
    CHECK(b.tag_at(rest, 1) == 13);
    io_uring_sqe sqe{};
    b.prep_list(&sqe, uapi::kIoCommitIoCmds, rest);
    uapi::BatchElem e{};
    uint64_t addr = 0;
    const auto* p = reinterpret_cast<const uint8_t*>(sqe.addr);
    std::memcpy(&e, p + 16, sizeof(e));
    std::memcpy(&addr, p + 24, sizeof(addr));
    CHECK(e.tag == 13);
    CHECK(e.result == 1300);
    CHECK(addr == 13 * 0x1000u);
    CHECK(b.elements(b.take_rest(slot, 4)) == 0);
  }
  SECTION("a freed slot is reused, emptied") {
    BatchCommands b(0, 4, false, false);
    const uint16_t a = b.take_slot();
    const uint16_t c = b.take_slot();
    CHECK(a != c);
    b.add(a, 1, 0, 0);
    b.free_slot(a);
    CHECK(b.take_slot() == a);
    CHECK(b.elements(a) == 0);
  }
}

TEST_CASE("batch commands: the fetch is a multishot command selecting from the tag buffers",
          "[batch]") {
  BatchCommands b(2, 64, true, false);
  io_uring_sqe sqe{};
  b.prep_fetch(&sqe);
  CHECK(sqe.cmd_op == 0xc0107527);
  CHECK((sqe.flags & (IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT)) ==
        (IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT));
  CHECK(sqe.buf_group == BatchCommands::kFetchGroup);
  CHECK(sqe.uring_cmd_flags == uapi::kUringCmdMultishot);
  const uapi::BatchIo h = header_of(sqe);
  CHECK(h.q_id == 2);
  CHECK(h.elem_bytes == 2);
  CHECK(h.nr_elem == 64);
  CHECK(h.flags == 0);
}

TEST_CASE("batch commands: tag lists arrive in the ring's buffers and each buffer comes back",
          "[batch]") {
  // The kernel fills a selected buffer as it fills a fetch's; here a read
  // from a pipe, with the same buffer group, stands in for it. Three times
  // as many reads as buffers: only buffers given back make that possible.
  auto ring = Ring::create(8, 0);
  REQUIRE(ring);
  constexpr uint16_t kDepth = 8;
  BatchCommands b(0, kDepth, false, false);
  auto reg = b.register_fetch_ring(ring->get());
  INFO((reg ? std::string() : reg.error().to_string()));
  REQUIRE(reg);
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  UniqueFd rd(fds[0]), wr(fds[1]);

  for (unsigned round = 0; round < 3 * BatchCommands::kFetchBufs; ++round) {
    const uint16_t tags[3] = {static_cast<uint16_t>(round % kDepth), 6, 7};
    REQUIRE(::write(wr.get(), tags, sizeof(tags)) == static_cast<ssize_t>(sizeof(tags)));
    io_uring_sqe* sqe = ring->get_sqe();
    REQUIRE(sqe != nullptr);
    io_uring_prep_read(sqe, rd.get(), nullptr, kDepth * sizeof(uint16_t), 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BatchCommands::kFetchGroup;
    REQUIRE(ring->submit_all());
    auto cqe = ring->wait_cqe(std::chrono::seconds(5));
    REQUIRE(cqe);
    const io_uring_cqe c = **cqe;
    io_uring_cqe_seen(ring->get(), *cqe);
    INFO("round " << round << ": res " << c.res);
    REQUIRE(c.res == static_cast<int>(sizeof(tags)));
    REQUIRE((c.flags & IORING_CQE_F_BUFFER) != 0);
    const auto got = b.fetched(c);
    REQUIRE(got.size() == 3);
    CHECK(got[0] == tags[0]);
    CHECK(got[1] == 6);
    CHECK(got[2] == 7);
    b.give_back(c);
  }

  io_uring_cqe none{};
  none.res = 4;
  CHECK(b.fetched(none).empty());  // no buffer named
}
