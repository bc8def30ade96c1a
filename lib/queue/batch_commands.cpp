#include "queue/batch_commands.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "uapi/ublk.h"
#include "uring/ring.h"

namespace ublkd {

BatchCommands::BatchCommands(uint16_t queue_id, uint16_t depth, bool buf_addr, bool buf_index)
    : queue_id_(queue_id),
      depth_(depth),
      buf_index_(buf_index),
      flags_(buf_addr ? uapi::kBatchHasBufAddr : 0),
      elem_bytes_(sizeof(uapi::BatchElem) + (buf_addr ? sizeof(uint64_t) : 0)),
      tags_(static_cast<size_t>(kFetchBufs) * depth, 0) {}

Result<void> BatchCommands::register_fetch_ring(io_uring* ring) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t len = (kFetchBufs * sizeof(io_uring_buf) + page - 1) / page * page;
  void* addr = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (addr == MAP_FAILED) return errno_error("mmap the fetch buffer ring");
  ring_map_ = Mapping(addr, len);
  ring_ = static_cast<io_uring_buf_ring*>(addr);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uintptr_t>(addr);
  reg.ring_entries = kFetchBufs;
  reg.bgid = kFetchGroup;
  if (const int ret = io_uring_register_buf_ring(ring, &reg, 0); ret < 0)
    return Error(ret, "io_uring register the fetch buffer ring");
  io_uring_buf_ring_init(ring_);
  const int mask = io_uring_buf_ring_mask(kFetchBufs);
  for (uint16_t bid = 0; bid < kFetchBufs; ++bid) {
    io_uring_buf_ring_add(ring_, &tags_[static_cast<size_t>(bid) * depth_],
                          depth_ * sizeof(uint16_t), bid, mask, bid);
  }
  io_uring_buf_ring_advance(ring_, kFetchBufs);
  return {};
}

void BatchCommands::prep_fetch(io_uring_sqe* sqe) const {
  uapi::BatchIo cmd{};
  cmd.q_id = queue_id_;
  cmd.nr_elem = depth_;
  cmd.elem_bytes = sizeof(uint16_t);
  prep_uring_cmd(sqe, 0, uapi::batch_op_ioctl(uapi::kIoFetchIoCmds), cmd);
  sqe->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
  sqe->buf_group = kFetchGroup;
  sqe->uring_cmd_flags = uapi::kUringCmdMultishot;
}

std::span<const uint16_t> BatchCommands::fetched(const io_uring_cqe& cqe) const {
  if (!(cqe.flags & IORING_CQE_F_BUFFER) || cqe.res <= 0) return {};
  const unsigned bid = cqe.flags >> IORING_CQE_BUFFER_SHIFT;
  if (bid >= kFetchBufs) return {};
  const size_t n = std::min<size_t>(static_cast<size_t>(cqe.res) / sizeof(uint16_t), depth_);
  return {&tags_[static_cast<size_t>(bid) * depth_], n};
}

void BatchCommands::give_back(const io_uring_cqe& cqe) {
  if (!(cqe.flags & IORING_CQE_F_BUFFER)) return;
  const auto bid = static_cast<uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
  if (bid >= kFetchBufs) return;
  io_uring_buf_ring_add(ring_, &tags_[static_cast<size_t>(bid) * depth_],
                        depth_ * sizeof(uint16_t), bid, io_uring_buf_ring_mask(kFetchBufs), 0);
  io_uring_buf_ring_advance(ring_, 1);
}

uint16_t BatchCommands::take_slot() {
  if (!free_slots_.empty()) {
    const uint16_t slot = free_slots_.back();
    free_slots_.pop_back();
    return slot;
  }
  slots_.push_back(Slot{std::vector<uint8_t>(static_cast<size_t>(depth_) * elem_bytes_), 0});
  return static_cast<uint16_t>(slots_.size() - 1);
}

void BatchCommands::free_slot(uint16_t slot) {
  slots_[slot].elems = 0;
  free_slots_.push_back(slot);
}

// A slot holds a tag at most once (a request has one answer, a slot one
// loop pass's answers), so `depth` elements fit unless that is broken.
bool BatchCommands::add(uint16_t slot, uint16_t tag, int32_t result, uint64_t addr) {
  Slot& s = slots_[slot];
  if (s.elems >= depth_) return false;
  uapi::BatchElem e{};
  e.tag = tag;
  e.buf_index = buf_index_ ? tag : 0;
  e.result = result;
  uint8_t* p = s.data.data() + static_cast<size_t>(s.elems) * elem_bytes_;
  std::memcpy(p, &e, sizeof(e));
  if (flags_ & uapi::kBatchHasBufAddr) std::memcpy(p + sizeof(e), &addr, sizeof(addr));
  ++s.elems;
  return true;
}

uint16_t BatchCommands::take_rest(uint16_t slot, uint16_t first) {
  const uint16_t rest = take_slot();  // may move slots_: index, not reference
  const uint16_t n = first < slots_[slot].elems ? slots_[slot].elems - first : 0;
  std::memcpy(slots_[rest].data.data(),
              slots_[slot].data.data() + static_cast<size_t>(first) * elem_bytes_,
              static_cast<size_t>(n) * elem_bytes_);
  slots_[rest].elems = n;
  return rest;
}

uint16_t BatchCommands::tag_at(uint16_t slot, uint16_t index) const {
  uapi::BatchElem e{};
  std::memcpy(&e, slots_[slot].data.data() + static_cast<size_t>(index) * elem_bytes_, sizeof(e));
  return e.tag;
}

void BatchCommands::prep_list(io_uring_sqe* sqe, uint8_t op, uint16_t slot) const {
  uapi::BatchIo cmd{};
  cmd.q_id = queue_id_;
  cmd.flags = flags_;
  cmd.nr_elem = slots_[slot].elems;
  cmd.elem_bytes = static_cast<uint8_t>(elem_bytes_);
  prep_uring_cmd(sqe, 0, uapi::batch_op_ioctl(op), cmd);
  sqe->flags |= IOSQE_FIXED_FILE;
  sqe->addr = reinterpret_cast<uintptr_t>(slots_[slot].data.data());
}

}  // namespace ublkd
