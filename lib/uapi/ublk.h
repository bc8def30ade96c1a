// Our own definition of the ublk userspace ABI (include/uapi/linux/ublk_cmd.h).
// Debian 12's linux-libc-dev ships the 6.1 header, which lacks GET_FEATURES,
// the ioctl-encoded io commands and every feature bit past 6.1, so the
// project carries the subset it speaks, checked against the kernel's layout
// by the static_asserts below. Values are ABI: never renumber.
#pragma once

#include <linux/ioctl.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>

namespace ublkd::uapi {

// ---- control commands (on /dev/ublk-control) --------------------------------

struct CtrlCmd {
  uint32_t dev_id;
  uint16_t queue_id;  // 0xffff when not queue-specific
  uint16_t len;       // of the buffer at addr
  uint64_t addr;
  uint64_t data[1];
  uint16_t dev_path_len;  // unprivileged devices only
  uint16_t pad;
  uint32_t reserved;
};
static_assert(sizeof(CtrlCmd) == 32 && offsetof(CtrlCmd, addr) == 8 &&
              offsetof(CtrlCmd, data) == 16 && offsetof(CtrlCmd, dev_path_len) == 24);

struct CtrlDevInfo {
  uint16_t nr_hw_queues;
  uint16_t queue_depth;
  uint16_t state;
  uint16_t pad0;
  uint32_t max_io_buf_bytes;
  uint32_t dev_id;
  int32_t ublksrv_pid;
  uint32_t pad1;
  uint64_t flags;
  uint64_t ublksrv_flags;  // ours; the kernel stores and returns it untouched
  uint32_t owner_uid;
  uint32_t owner_gid;
  uint64_t reserved1;
  uint64_t reserved2;
};
static_assert(sizeof(CtrlDevInfo) == 64 && offsetof(CtrlDevInfo, max_io_buf_bytes) == 8 &&
              offsetof(CtrlDevInfo, dev_id) == 12 && offsetof(CtrlDevInfo, ublksrv_pid) == 16 &&
              offsetof(CtrlDevInfo, flags) == 24 && offsetof(CtrlDevInfo, owner_uid) == 40);

// Command numbers. The legacy encoding is the plain number; kernels with
// UBLK_F_CMD_IOCTL_ENCODE (and every command added after 6.1) take the
// ioctl-style encoding of the same number.
// clang-format off
enum CtrlOp : uint8_t {
  kCmdGetQueueAffinity = 0x01, kCmdGetDevInfo = 0x02, kCmdAddDev = 0x04, kCmdDelDev = 0x05,
  kCmdStartDev = 0x06, kCmdStopDev = 0x07, kCmdSetParams = 0x08, kCmdGetParams = 0x09,
  kCmdStartUserRecovery = 0x10, kCmdEndUserRecovery = 0x11, kCmdGetDevInfo2 = 0x12,
  kCmdGetFeatures = 0x13, kCmdDelDevAsync = 0x14, kCmdUpdateSize = 0x15,
  kCmdQuiesceDev = 0x16, kCmdTryStopDev = 0x17,
};
// clang-format on

// Direction bits of each command's ioctl encoding, as the kernel defines them.
constexpr bool ctrl_op_is_read_only(uint8_t op) {
  switch (op) {
    case kCmdGetQueueAffinity:
    case kCmdGetDevInfo:
    case kCmdGetParams:
    case kCmdGetDevInfo2:
    case kCmdGetFeatures:
    case kCmdDelDevAsync:
      return true;
    default:
      return false;
  }
}

constexpr uint32_t ctrl_op_ioctl(uint8_t op) {
  return ctrl_op_is_read_only(op) ? _IOR('u', op, CtrlCmd) : _IOWR('u', op, CtrlCmd);
}
static_assert(ctrl_op_ioctl(kCmdAddDev) == 0xc0207504);
static_assert(ctrl_op_ioctl(kCmdGetFeatures) == 0x80207513);
static_assert(ctrl_op_ioctl(kCmdQuiesceDev) == 0xc0207516);

// ---- io commands (on /dev/ublkcN) -------------------------------------------

struct IoCmd {
  uint16_t q_id;
  uint16_t tag;
  int32_t result;
  uint64_t addr;  // buffer address for FETCH / COMMIT_AND_FETCH
};
static_assert(sizeof(IoCmd) == 16);

// UBLK_F_AUTO_BUF_REG (6.16+): the kernel registers each request's pages in
// the fixed buffer table of the ring that fetched it, at `index`, and drops
// them again at COMMIT_AND_FETCH from that ring. It travels in the SQE's own
// addr field (IoCmd::addr must then be 0), packed as
// index | flags << 16 | reserved0 << 24 | reserved1 << 32.
struct AutoBufReg {
  uint16_t index;
  uint8_t flags;  // kAutoBufRegFallback
  uint8_t reserved0;
  uint32_t reserved1;
};
static_assert(sizeof(AutoBufReg) == 8);
static_assert(offsetof(AutoBufReg, flags) == 2);
static_assert(offsetof(AutoBufReg, reserved1) == 4);
// With it, a failed registration hands the request to the server with
// kIoFlagNeedRegBuf instead of failing it; without it, the request fails.
constexpr uint8_t kAutoBufRegFallback = 1u << 0;
constexpr uint64_t auto_buf_reg_sqe_addr(const AutoBufReg& r) {
  return uint64_t{r.index} | uint64_t{r.flags} << 16 | uint64_t{r.reserved0} << 24 |
         uint64_t{r.reserved1} << 32;
}
static_assert(auto_buf_reg_sqe_addr(AutoBufReg{0x1234, kAutoBufRegFallback, 0, 0}) == 0x11234);

enum IoCmdOp : uint8_t {
  kIoFetchReq = 0x20,
  kIoCommitAndFetchReq = 0x21,
  kIoNeedGetData = 0x22,
};

constexpr uint32_t io_op_ioctl(uint8_t op) { return _IOWR('u', op, IoCmd); }
static_assert(io_op_ioctl(kIoFetchReq) == 0xc0107520);

// UBLK_F_BATCH_IO (7.0+): instead of a command per tag, PREP_IO_CMDS arms
// many tags at once, one multishot FETCH_IO_CMDS per queue delivers the
// tags of new requests (2 bytes each) into buffers the server provides
// (a buffer ring), and COMMIT_IO_CMDS answers many requests at once; the
// per-tag FETCH_REQ / COMMIT_AND_FETCH_REQ are refused on such a device.
// The three travel in the SQE's cmd area as BatchIo; PREP and COMMIT point
// sqe->addr at nr_elem elements of elem_bytes each: BatchElem, followed
// by the buffer address when kBatchHasBufAddr is set.
struct BatchIo {
  uint16_t q_id;
  uint16_t flags;  // kBatch*
  uint16_t nr_elem;
  uint8_t elem_bytes;
  uint8_t reserved;
  uint64_t reserved2;
};
static_assert(sizeof(BatchIo) == 16 && offsetof(BatchIo, nr_elem) == 4 &&
              offsetof(BatchIo, elem_bytes) == 6);
struct BatchElem {
  uint16_t tag;
  uint16_t buf_index;  // with AUTO_BUF_REG: the fixed-buffer slot
  int32_t result;      // COMMIT only
};
static_assert(sizeof(BatchElem) == 8 && offsetof(BatchElem, result) == 4);
constexpr uint16_t kBatchHasBufAddr = 1u << 1;
// FETCH_IO_CMDS must be multishot (IORING_URING_CMD_MULTISHOT in
// sqe->uring_cmd_flags; liburing 2.3 lacks the name).
constexpr uint32_t kUringCmdMultishot = 1u << 1;

enum BatchCmdOp : uint8_t {
  kIoPrepIoCmds = 0x25,
  kIoCommitIoCmds = 0x26,
  kIoFetchIoCmds = 0x27,
};
constexpr uint32_t batch_op_ioctl(uint8_t op) { return _IOWR('u', op, BatchIo); }
static_assert(batch_op_ioctl(kIoPrepIoCmds) == 0xc0107525);
static_assert(batch_op_ioctl(kIoFetchIoCmds) == 0xc0107527);

// Per-tag descriptor the kernel fills in the mmapped area of each queue.
struct IoDesc {
  uint32_t op_flags;  // op in the low 8 bits, UBLK_IO_F_* above
  uint32_t nr_sectors;
  uint64_t start_sector;
  uint64_t addr;
};
static_assert(sizeof(IoDesc) == 24);

inline uint8_t io_desc_op(const IoDesc& d) { return d.op_flags & 0xff; }
// The UBLK_IO_F_* bits where the kIoFlag* constants below (and the kernel's
// UBLK_IO_F_* values) have them: the driver stores op | UBLK_IO_F_*, so they
// are masked, not shifted down as ublksrv_get_flags() would.
inline uint32_t io_desc_flags(const IoDesc& d) { return d.op_flags & ~uint32_t{0xff}; }

// clang-format off
enum IoOpCode : uint8_t {
  kOpRead = 0, kOpWrite = 1, kOpFlush = 2, kOpDiscard = 3, kOpWriteSame = 4, kOpWriteZeroes = 5,
};
// clang-format on

constexpr uint32_t kIoFlagFua = 1u << 13;
constexpr uint32_t kIoFlagNoUnmap = 1u << 15;
// Set by a kernel whose automatic buffer registration failed (only with
// kAutoBufRegFallback).
constexpr uint32_t kIoFlagNeedRegBuf = 1u << 17;

constexpr int kIoResOk = 0;
constexpr int kIoResNeedGetData = 1;
constexpr int kIoResAbort = -ENODEV;

constexpr uint32_t kMaxQueueDepth = 4096;
constexpr uint32_t kMaxQueues = 4096;
constexpr uint64_t kCmdBufOffset = 0;
// The kernel caps a request's buffer at 1 << UBLK_IO_BUF_BITS.
constexpr uint32_t kMaxIoBufBytes = 1u << 25;

// UBLK_F_USER_COPY: a request's data is read (pread, a WRITE's data) and
// written (pwrite, a READ's) on the char device at this position plus the
// byte offset within the request (UBLKSRV_IO_BUF_OFFSET, UBLK_TAG_OFF,
// UBLK_QID_OFF).
constexpr uint64_t kIoBufOffset = 0x80000000ull;
constexpr unsigned kIoBufBits = 25;
constexpr unsigned kTagOff = kIoBufBits;
constexpr unsigned kTagBits = 16;
constexpr unsigned kQidOff = kTagOff + kTagBits;
constexpr unsigned kQidBits = 12;
static_assert(kQidOff == 41 && kQidOff + kQidBits == 53);
static_assert((uint64_t{1} << kIoBufBits) == kMaxIoBufBytes);
constexpr uint64_t user_copy_pos(uint16_t q_id, uint16_t tag) {
  return kIoBufOffset + (uint64_t{q_id} << kQidOff) + (uint64_t{tag} << kTagOff);
}
static_assert(user_copy_pos(1, 2) == 0x80000000ull + (1ull << 41) + (2ull << 25));

// ---- feature flags (dev_info.flags, GET_FEATURES) ---------------------------

constexpr uint64_t kFeatSupportZeroCopy = 1ull << 0;
constexpr uint64_t kFeatUringCmdCompInTask = 1ull << 1;
constexpr uint64_t kFeatNeedGetData = 1ull << 2;
constexpr uint64_t kFeatUserRecovery = 1ull << 3;
constexpr uint64_t kFeatUserRecoveryReissue = 1ull << 4;
constexpr uint64_t kFeatUnprivilegedDev = 1ull << 5;
constexpr uint64_t kFeatCmdIoctlEncode = 1ull << 6;
constexpr uint64_t kFeatUserCopy = 1ull << 7;
constexpr uint64_t kFeatZoned = 1ull << 8;
constexpr uint64_t kFeatUserRecoveryFailIo = 1ull << 9;
constexpr uint64_t kFeatUpdateSize = 1ull << 10;
constexpr uint64_t kFeatAutoBufReg = 1ull << 11;
constexpr uint64_t kFeatQuiesce = 1ull << 12;
constexpr uint64_t kFeatPerIoDaemon = 1ull << 13;
constexpr uint64_t kFeatBufRegOffDaemon = 1ull << 14;
constexpr uint64_t kFeatBatchIo = 1ull << 15;
constexpr uint64_t kFeatIntegrity = 1ull << 16;
constexpr uint64_t kFeatSafeStopDev = 1ull << 17;
constexpr uint64_t kFeatNoAutoPartScan = 1ull << 18;
constexpr uint64_t kFeatShmemZc = 1ull << 19;

// Names of the bits above, indexed by bit number, for logs and `features`.
inline constexpr const char* kFeatureNames[] = {
    "ZERO_COPY",          "URING_CMD_COMP_IN_TASK", "NEED_GET_DATA",   "USER_RECOVERY",
    "USER_RECOVERY_REISSUE", "UNPRIVILEGED_DEV",    "CMD_IOCTL_ENCODE", "USER_COPY",
    "ZONED",              "USER_RECOVERY_FAIL_IO",  "UPDATE_SIZE",     "AUTO_BUF_REG",
    "QUIESCE",            "PER_IO_DAEMON",          "BUF_REG_OFF_DAEMON", "BATCH_IO",
    "INTEGRITY",          "SAFE_STOP_DEV",          "NO_AUTO_PART_SCAN", "SHMEM_ZC",
};

// Device states in dev_info.state.
constexpr uint16_t kDevStateDead = 0;
constexpr uint16_t kDevStateLive = 1;
constexpr uint16_t kDevStateQuiesced = 2;
constexpr uint16_t kDevStateFailIo = 3;

// ---- parameters (SET_PARAMS / GET_PARAMS) -----------------------------------

constexpr uint32_t kAttrReadOnly = 1u << 0;
constexpr uint32_t kAttrRotational = 1u << 1;
constexpr uint32_t kAttrVolatileCache = 1u << 2;
constexpr uint32_t kAttrFua = 1u << 3;

constexpr uint32_t kParamTypeBasic = 1u << 0;
constexpr uint32_t kParamTypeDiscard = 1u << 1;
constexpr uint32_t kParamTypeDevt = 1u << 2;

struct ParamBasic {
  uint32_t attrs;
  uint8_t logical_bs_shift;
  uint8_t physical_bs_shift;
  uint8_t io_opt_shift;
  uint8_t io_min_shift;
  uint32_t max_sectors;
  uint32_t chunk_sectors;
  uint64_t dev_sectors;
  uint64_t virt_boundary_mask;
};
static_assert(sizeof(ParamBasic) == 32);

struct ParamDiscard {
  uint32_t discard_alignment;
  uint32_t discard_granularity;
  uint32_t max_discard_sectors;
  uint32_t max_write_zeroes_sectors;
  uint16_t max_discard_segments;
  uint16_t reserved0;
};
static_assert(sizeof(ParamDiscard) == 20);

struct ParamDevt {
  uint32_t char_major;
  uint32_t char_minor;
  uint32_t disk_major;
  uint32_t disk_minor;
};
static_assert(sizeof(ParamDevt) == 16);

struct ParamZoned {
  uint32_t max_open_zones;
  uint32_t max_active_zones;
  uint32_t max_zone_append_sectors;
  uint8_t reserved[20];
};
static_assert(sizeof(ParamZoned) == 32);

// The prefix of struct ublk_params that every kernel we support knows. The
// kernel copies min(len, its own size), so sending this shorter struct is
// valid on newer kernels, which simply see the later parameter types absent.
struct Params {
  uint32_t len;
  uint32_t types;
  ParamBasic basic;
  ParamDiscard discard;
  ParamDevt devt;
  ParamZoned zoned;
};
static_assert(offsetof(Params, basic) == 8 && offsetof(Params, discard) == 40 &&
              offsetof(Params, devt) == 60 && offsetof(Params, zoned) == 76 &&
              sizeof(Params) == 112);

// mmap offset of queue q's io descriptors on /dev/ublkcN. The stride uses the
// maximum depth, not the device's depth.
constexpr uint64_t io_desc_mmap_offset(uint32_t q, uint64_t page_size) {
  const uint64_t per_queue = kMaxQueueDepth * sizeof(IoDesc);
  return kCmdBufOffset + q * ((per_queue + page_size - 1) / page_size * page_size);
}

}  // namespace ublkd::uapi
