// The few facts that make up a device, kept in one struct so that the
// daemon's spec, the device's config and what `list` shows share them
// instead of copying them field by field.
#pragma once

#include <cstdint>

namespace ublkd {

// What a device is asked to be, the same wherever it is described: in an
// administrator's spec, in a DeviceConfig, in what `list` shows.
struct DeviceShape {
  bool read_only = false;
  // Ask for UBLK_F_USER_RECOVERY (and _REISSUE where serving a request
  // twice is harmless, reissue_safe): if this process dies the kernel keeps
  // the device quiesced, its I/O waiting, until a new server recover()s it.
  bool recovery = true;
  uint16_t queues = 1;
  uint16_t queue_depth = 128;
  uint32_t logical_block_size = 512;
  // The kernel reads the partition table when the device starts, and
  // /dev/ublkbNpM appear. Off (UBLK_F_NO_AUTO_PART_SCAN) for images whose
  // partitions this host must not see.
  bool partition_scan = true;

  bool operator==(const DeviceShape&) const = default;
};

}  // namespace ublkd
