// The user_data of every SQE on a queue's ring, and so of its CQE: which
// kind of completion it is and for which tag. The queue worker and the
// backends that queue SQEs of their own (QueueContext) both pack and read
// it here, so the layout is written down once.
//
//   bits  0..15  the tag
//   bits 16..31  a backend SQE's cookie (the backend's own)
//   bit  32      the worker's own SQEs: the read of its wake eventfd
//                (bit 32 alone), its timer (bit 32 and bit 0), and with
//                UBLK_F_BATCH_IO its PREP_IO_CMDS (bit 32 and bit 1), its
//                FETCH_IO_CMDS (bit 32 and bit 2) and each COMMIT_IO_CMDS
//                (bit 32 and bit 3, the commit's slot in bits 16..31)
//   bit  33      an SQE a backend queued while serving the tag (else: a
//                ublk io command)
//   bit  34      an SQE a backend queued for the whole queue, tied to no
//                tag (the poll on a network backend's socket, its timer):
//                the cookie only, routed to Backend::on_event
#pragma once

#include <cstdint>

namespace ublkd::user_data {

inline constexpr uint64_t kWake = 1ull << 32;
inline constexpr uint64_t kTimer = kWake | 1;
inline constexpr uint64_t kPrepCmds = kWake | 2;
inline constexpr uint64_t kFetchCmds = kWake | 4;
inline constexpr uint64_t kCommitCmdsBit = kWake | 8;
inline constexpr uint64_t kBackendBit = 1ull << 33;
inline constexpr uint64_t kBackendEventBit = 1ull << 34;
inline constexpr unsigned kCookieShift = 16;

// A ublk io command (FETCH_REQ, COMMIT_AND_FETCH_REQ) for `tag`.
constexpr uint64_t io_command(uint16_t tag) {
  return tag;
}
// An SQE a backend queued while serving `tag`.
constexpr uint64_t backend(uint16_t tag, uint16_t cookie) {
  return kBackendBit | (uint64_t{cookie} << kCookieShift) | tag;
}
constexpr bool is_backend(uint64_t user_data) {
  return (user_data & kBackendBit) != 0;
}
// A queue-level SQE a backend queued, tied to no tag.
constexpr uint64_t backend_event(uint16_t cookie) {
  return kBackendEventBit | (uint64_t{cookie} << kCookieShift);
}
constexpr bool is_backend_event(uint64_t user_data) {
  return (user_data & kBackendEventBit) != 0;
}
// A COMMIT_IO_CMDS whose elements are in commit slot `slot`.
constexpr uint64_t commit_cmds(uint16_t slot) {
  return kCommitCmdsBit | (uint64_t{slot} << kCookieShift);
}
constexpr bool is_commit_cmds(uint64_t user_data) {
  return (user_data & ~(uint64_t{0xffff} << kCookieShift)) == kCommitCmdsBit;
}
constexpr uint16_t tag_of(uint64_t user_data) {
  return static_cast<uint16_t>(user_data);
}
constexpr uint16_t cookie_of(uint64_t user_data) {
  return static_cast<uint16_t>(user_data >> kCookieShift);
}

// No tag and cookie can produce the worker's values or a backend bit by
// themselves, and every field reads back as packed.
static_assert((kWake & kBackendBit) == 0 && (kTimer & kBackendBit) == 0 && kWake != kTimer);
static_assert((backend(0xffff, 0xffff) & kWake) == 0);
static_assert((io_command(0xffff) & (kWake | kBackendBit | kBackendEventBit)) == 0);
static_assert((backend(0xffff, 0xffff) & kBackendEventBit) == 0);
static_assert(((kWake | kTimer) & kBackendEventBit) == 0);
static_assert((backend_event(0xffff) & (kWake | kBackendBit | 0xffff)) == 0);
static_assert(!is_backend(kWake) && !is_backend(kTimer) && !is_backend(io_command(0xffff)));
static_assert(!is_backend_event(kWake) && !is_backend_event(kTimer) &&
              !is_backend_event(io_command(0xffff)) && !is_backend_event(backend(0xffff, 0xffff)));
static_assert(is_backend(backend(0, 0)));
static_assert(is_backend_event(backend_event(0)) && !is_backend(backend_event(0xffff)));
static_assert(backend_event(0) != kWake && backend_event(0) != kTimer);
static_assert(cookie_of(backend_event(0xabcd)) == 0xabcd);
static_assert(tag_of(backend(0x1234, 0xabcd)) == 0x1234);
static_assert(cookie_of(backend(0x1234, 0xabcd)) == 0xabcd);
static_assert(tag_of(io_command(0xfffe)) == 0xfffe);
static_assert(is_commit_cmds(commit_cmds(0)) && is_commit_cmds(commit_cmds(0xffff)) &&
              cookie_of(commit_cmds(0x1234)) == 0x1234);
static_assert(!is_commit_cmds(kWake) && !is_commit_cmds(kTimer) && !is_commit_cmds(kPrepCmds) &&
              !is_commit_cmds(kFetchCmds) && !is_commit_cmds(io_command(0xffff)) &&
              !is_commit_cmds(backend(0xffff, 0xffff)) && !is_commit_cmds(backend_event(0xffff)));
static_assert(!is_backend(commit_cmds(0xffff)) && !is_backend_event(commit_cmds(0xffff)) &&
              !is_backend(kFetchCmds) && !is_backend_event(kPrepCmds));
static_assert(kPrepCmds != kWake && kPrepCmds != kTimer && kFetchCmds != kWake &&
              kFetchCmds != kTimer && kPrepCmds != kFetchCmds);

}  // namespace ublkd::user_data
