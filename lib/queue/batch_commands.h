// A queue's io commands under UBLK_F_BATCH_IO (QueueConfig::batch_io): the
// memory they point the kernel at and the SQEs that carry them. The queue
// loop decides when to send what; this knows the layout.
//  - The fetch buffer ring, from which the multishot FETCH_IO_CMDS takes a
//    buffer for each list of ready tags it posts: kFetchBufs buffers of
//    `depth` tags each, so that one buffer holds every tag the kernel can
//    hand out at once. A buffer is out of the ring from the completion
//    that names it until give_back(): the kernel cannot write a list that
//    is being read.
//  - Element lists ("slots") for PREP_IO_CMDS and COMMIT_IO_CMDS: a
//    uapi::BatchElem per tag, followed by the tag's buffer address where
//    the device has buffers; kept until the command's completion, since
//    the kernel reads them when it runs the command.
// Owned by the queue thread; it must outlive the ring (the kernel writes
// tag lists as long as the ring's fetch lives).
#pragma once

#include <liburing.h>

#include <cstdint>
#include <span>
#include <vector>

#include "base/error.h"
#include "base/mapping.h"

namespace ublkd {

class BatchCommands {
 public:
  static constexpr unsigned kFetchBufs = 16;  // a power of 2, as the ring needs
  static constexpr uint16_t kFetchGroup = 0;

  // `buf_addr`: the device has a buffer per tag (neither USER_COPY nor
  // AUTO_BUF_REG), whose address goes with each element. `buf_index`: the
  // device has AUTO_BUF_REG, and each tag's fixed-buffer slot is its tag.
  BatchCommands(uint16_t queue_id, uint16_t depth, bool buf_addr, bool buf_index);
  BatchCommands(const BatchCommands&) = delete;
  BatchCommands& operator=(const BatchCommands&) = delete;

  // Maps the fetch buffer ring, registers it with `ring` as group
  // kFetchGroup and puts every buffer in it.
  Result<void> register_fetch_ring(io_uring* ring);

  // The multishot FETCH_IO_CMDS, into `sqe` (fixed file 0: the char device).
  void prep_fetch(io_uring_sqe* sqe) const;
  // The tags a FETCH_IO_CMDS completion lists; empty if it names no buffer.
  std::span<const uint16_t> fetched(const io_uring_cqe& cqe) const;
  // Puts the buffer a completion named back into the ring (no-op if none).
  void give_back(const io_uring_cqe& cqe);

  // Element lists. A slot is taken, filled and sent once, and freed at its
  // command's completion.
  uint16_t take_slot();
  void free_slot(uint16_t slot);
  // Appends a tag's element; `addr` is its buffer (used with buf_addr).
  // False, nothing added, if the slot holds `depth` elements already.
  bool add(uint16_t slot, uint16_t tag, int32_t result, uint64_t addr);
  // A new slot with the elements of `slot` from index `first` on (for the
  // rest of a list the kernel stopped taking at an element it refused).
  uint16_t take_rest(uint16_t slot, uint16_t first);
  uint16_t tag_at(uint16_t slot, uint16_t index) const;
  uint16_t elements(uint16_t slot) const { return slots_[slot].elems; }
  // What the kernel answers for a slot it took in full.
  int bytes(uint16_t slot) const { return slots_[slot].elems * static_cast<int>(elem_bytes_); }
  // PREP_IO_CMDS (op uapi::kIoPrepIoCmds) or COMMIT_IO_CMDS of the slot's
  // elements, into `sqe`.
  void prep_list(io_uring_sqe* sqe, uint8_t op, uint16_t slot) const;

  unsigned elem_bytes() const { return elem_bytes_; }
  uint16_t flags() const { return flags_; }

 private:
  struct Slot {
    std::vector<uint8_t> data;
    uint16_t elems = 0;
  };

  const uint16_t queue_id_;
  const uint16_t depth_;
  const bool buf_index_;
  const uint16_t flags_;  // uapi::kBatch*
  const unsigned elem_bytes_;
  Mapping ring_map_;
  io_uring_buf_ring* ring_ = nullptr;
  std::vector<uint16_t> tags_;
  std::vector<Slot> slots_;
  std::vector<uint16_t> free_slots_;
};

}  // namespace ublkd
