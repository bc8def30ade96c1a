// Our ublk ABI definitions against the kernel header Debian ships (6.1): the
// parts that header has must match it exactly; the rest is pinned by
// static_asserts in lib/uapi/ublk.h.
#include <catch2/catch.hpp>

#include <linux/ublk_cmd.h>

#include <cstddef>

#include "base/error.h"
#include "uapi/ublk.h"

using namespace ublkd;

#define SAME_LAYOUT(ours, theirs, field) \
  CHECK(offsetof(ours, field) == offsetof(theirs, field))

TEST_CASE("control structures match the kernel header", "[uapi]") {
  CHECK(sizeof(uapi::CtrlCmd) == sizeof(ublksrv_ctrl_cmd));
  SAME_LAYOUT(uapi::CtrlCmd, ublksrv_ctrl_cmd, dev_id);
  SAME_LAYOUT(uapi::CtrlCmd, ublksrv_ctrl_cmd, queue_id);
  SAME_LAYOUT(uapi::CtrlCmd, ublksrv_ctrl_cmd, len);
  SAME_LAYOUT(uapi::CtrlCmd, ublksrv_ctrl_cmd, addr);
  SAME_LAYOUT(uapi::CtrlCmd, ublksrv_ctrl_cmd, data);

  CHECK(sizeof(uapi::CtrlDevInfo) == sizeof(ublksrv_ctrl_dev_info));
  SAME_LAYOUT(uapi::CtrlDevInfo, ublksrv_ctrl_dev_info, nr_hw_queues);
  SAME_LAYOUT(uapi::CtrlDevInfo, ublksrv_ctrl_dev_info, queue_depth);
  SAME_LAYOUT(uapi::CtrlDevInfo, ublksrv_ctrl_dev_info, state);
  SAME_LAYOUT(uapi::CtrlDevInfo, ublksrv_ctrl_dev_info, max_io_buf_bytes);
  SAME_LAYOUT(uapi::CtrlDevInfo, ublksrv_ctrl_dev_info, dev_id);
  SAME_LAYOUT(uapi::CtrlDevInfo, ublksrv_ctrl_dev_info, ublksrv_pid);
  SAME_LAYOUT(uapi::CtrlDevInfo, ublksrv_ctrl_dev_info, flags);
  SAME_LAYOUT(uapi::CtrlDevInfo, ublksrv_ctrl_dev_info, ublksrv_flags);
}

TEST_CASE("io structures match the kernel header", "[uapi]") {
  CHECK(sizeof(uapi::IoCmd) == sizeof(ublksrv_io_cmd));
  SAME_LAYOUT(uapi::IoCmd, ublksrv_io_cmd, q_id);
  SAME_LAYOUT(uapi::IoCmd, ublksrv_io_cmd, tag);
  SAME_LAYOUT(uapi::IoCmd, ublksrv_io_cmd, result);
  SAME_LAYOUT(uapi::IoCmd, ublksrv_io_cmd, addr);

  CHECK(sizeof(uapi::IoDesc) == sizeof(ublksrv_io_desc));
  SAME_LAYOUT(uapi::IoDesc, ublksrv_io_desc, op_flags);
  SAME_LAYOUT(uapi::IoDesc, ublksrv_io_desc, nr_sectors);
  SAME_LAYOUT(uapi::IoDesc, ublksrv_io_desc, start_sector);
  SAME_LAYOUT(uapi::IoDesc, ublksrv_io_desc, addr);
}

TEST_CASE("io descriptor flags come out as the UBLK_IO_F_* values", "[uapi]") {
  CHECK(uapi::kIoFlagFua == UBLK_IO_F_FUA);
  CHECK(uapi::kIoFlagNoUnmap == UBLK_IO_F_NOUNMAP);
  // What the driver's ublk_init_iod() stores: op | ublk_req_build_flags().
  uapi::IoDesc d{};
  d.op_flags = UBLK_IO_OP_WRITE | UBLK_IO_F_FUA;
  CHECK(uapi::io_desc_op(d) == UBLK_IO_OP_WRITE);
  CHECK(uapi::io_desc_flags(d) == UBLK_IO_F_FUA);
  d.op_flags = UBLK_IO_OP_WRITE_ZEROES | UBLK_IO_F_NOUNMAP;
  CHECK(uapi::io_desc_op(d) == UBLK_IO_OP_WRITE_ZEROES);
  CHECK(uapi::io_desc_flags(d) == UBLK_IO_F_NOUNMAP);
  d.op_flags = UBLK_IO_OP_READ;
  CHECK(uapi::io_desc_flags(d) == 0);
}

TEST_CASE("parameter structures match the kernel header", "[uapi]") {
  CHECK(sizeof(uapi::ParamBasic) == sizeof(ublk_param_basic));
  SAME_LAYOUT(uapi::ParamBasic, ublk_param_basic, attrs);
  SAME_LAYOUT(uapi::ParamBasic, ublk_param_basic, logical_bs_shift);
  SAME_LAYOUT(uapi::ParamBasic, ublk_param_basic, max_sectors);
  SAME_LAYOUT(uapi::ParamBasic, ublk_param_basic, dev_sectors);
  CHECK(sizeof(uapi::ParamDiscard) == sizeof(ublk_param_discard));
  SAME_LAYOUT(uapi::ParamDiscard, ublk_param_discard, max_write_zeroes_sectors);
  SAME_LAYOUT(uapi::ParamDiscard, ublk_param_discard, max_discard_segments);
  SAME_LAYOUT(uapi::Params, ublk_params, types);
  SAME_LAYOUT(uapi::Params, ublk_params, basic);
  SAME_LAYOUT(uapi::Params, ublk_params, discard);
  // Our Params may only grow past what 6.1 knows, never differ inside it.
  CHECK(sizeof(uapi::Params) >= sizeof(ublk_params));
}

TEST_CASE("command numbers and encodings match the kernel header", "[uapi]") {
  CHECK(uapi::kCmdGetQueueAffinity == UBLK_CMD_GET_QUEUE_AFFINITY);
  CHECK(uapi::kCmdGetDevInfo == UBLK_CMD_GET_DEV_INFO);
  CHECK(uapi::kCmdAddDev == UBLK_CMD_ADD_DEV);
  CHECK(uapi::kCmdDelDev == UBLK_CMD_DEL_DEV);
  CHECK(uapi::kCmdStartDev == UBLK_CMD_START_DEV);
  CHECK(uapi::kCmdStopDev == UBLK_CMD_STOP_DEV);
  CHECK(uapi::kCmdSetParams == UBLK_CMD_SET_PARAMS);
  CHECK(uapi::kCmdGetParams == UBLK_CMD_GET_PARAMS);
  CHECK(uapi::kCmdStartUserRecovery == UBLK_CMD_START_USER_RECOVERY);
  CHECK(uapi::kCmdEndUserRecovery == UBLK_CMD_END_USER_RECOVERY);
  CHECK(uapi::kIoFetchReq == UBLK_IO_FETCH_REQ);
  CHECK(uapi::kIoCommitAndFetchReq == UBLK_IO_COMMIT_AND_FETCH_REQ);
  CHECK(uapi::kIoNeedGetData == UBLK_IO_NEED_GET_DATA);
  CHECK(uapi::kIoResAbort == UBLK_IO_RES_ABORT);
  CHECK(uapi::kMaxQueueDepth == UBLK_MAX_QUEUE_DEPTH);
  // The ioctl form wraps the same number with the struct size and direction.
  CHECK(uapi::ctrl_op_ioctl(uapi::kCmdAddDev) ==
        _IOWR('u', UBLK_CMD_ADD_DEV, struct ublksrv_ctrl_cmd));
  CHECK(uapi::ctrl_op_ioctl(uapi::kCmdGetDevInfo) ==
        _IOR('u', UBLK_CMD_GET_DEV_INFO, struct ublksrv_ctrl_cmd));
  CHECK(uapi::io_op_ioctl(uapi::kIoCommitAndFetchReq) ==
        _IOWR('u', UBLK_IO_COMMIT_AND_FETCH_REQ, struct ublksrv_io_cmd));
}

TEST_CASE("feature bits 6.1 knows match", "[uapi]") {
  CHECK(uapi::kFeatSupportZeroCopy == UBLK_F_SUPPORT_ZERO_COPY);
  CHECK(uapi::kFeatUringCmdCompInTask == UBLK_F_URING_CMD_COMP_IN_TASK);
  CHECK(uapi::kFeatNeedGetData == UBLK_F_NEED_GET_DATA);
  CHECK(uapi::kFeatUserRecovery == UBLK_F_USER_RECOVERY);
  CHECK(uapi::kFeatUserRecoveryReissue == UBLK_F_USER_RECOVERY_REISSUE);
  CHECK(uapi::kAttrReadOnly == UBLK_ATTR_READ_ONLY);
  CHECK(uapi::kAttrVolatileCache == UBLK_ATTR_VOLATILE_CACHE);
  CHECK(uapi::kParamTypeBasic == UBLK_PARAM_TYPE_BASIC);
  CHECK(uapi::kParamTypeDiscard == UBLK_PARAM_TYPE_DISCARD);
  CHECK(std::size(uapi::kFeatureNames) == 20);
}

TEST_CASE("io descriptors of queue q sit at a max-depth stride", "[uapi]") {
  // 4096 descriptors of 24 bytes = 96 KiB per queue, page aligned.
  CHECK(uapi::io_desc_mmap_offset(0, 4096) == 0);
  CHECK(uapi::io_desc_mmap_offset(1, 4096) == 98304);
  CHECK(uapi::io_desc_mmap_offset(3, 4096) == 3 * 98304);
  CHECK(uapi::io_desc_mmap_offset(1, 65536) == 131072);
}

TEST_CASE("Error normalises errno sign and composes context", "[error]") {
  Error e(-ENOENT, "open /dev/ublkc3");
  CHECK(e.code() == ENOENT);
  CHECK(e.to_string() == "open /dev/ublkc3: No such file or directory");
  Error w = e.wrap("device mem0");
  CHECK(w.code() == ENOENT);
  CHECK(w.message() == "device mem0: open /dev/ublkc3");
  Result<int> r = Error(ETIMEDOUT, "START_DEV");
  CHECK_FALSE(r.ok());
  CHECK(r.error().code() == ETIMEDOUT);
  Result<int> ok = 7;
  REQUIRE(ok.ok());
  CHECK(*ok == 7);
}
