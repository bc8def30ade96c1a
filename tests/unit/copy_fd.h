// Stands in for the ublk char device under UBLK_F_USER_COPY: a request's
// data lives at kPos.. of this memfd, as it lives at its copy position on
// /dev/ublkcN, and a backend reaches it with pread / pwrite on the fd.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include "backend/backend.h"
#include "base/unique_fd.h"

namespace ublkd::test {

struct CopyFd {
  static constexpr uint64_t kPos = 5 * 1024 * 1024 + 512;  // not page-aligned on purpose
  UniqueFd fd{::memfd_create("copy", MFD_CLOEXEC)};

  // The backend's answer to a request whose data is here.
  int io(Backend& b, IoOp op, uint64_t offset, uint64_t length) const {
    IoRequest req{};
    req.op = op;
    req.offset = offset;
    req.length = static_cast<uint32_t>(length);
    req.copy_fd = fd.get();
    req.copy_pos = kPos;
    return b.handle(req);
  }
  void put(const std::vector<uint8_t>& data) const {
    REQUIRE(::pwrite(fd.get(), data.data(), data.size(), kPos) ==
            static_cast<ssize_t>(data.size()));
  }
  std::vector<uint8_t> get(uint64_t length) const {
    std::vector<uint8_t> v(length);
    REQUIRE(::pread(fd.get(), v.data(), length, kPos) == static_cast<ssize_t>(length));
    return v;
  }
};

}  // namespace ublkd::test
