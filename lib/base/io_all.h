// Repeats a positional read or write until all of it is done: the kernel
// may move fewer bytes than asked (signals, page boundaries of the other
// side), and EINTR is not an error.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>

namespace ublkd {

// Calls io(done) — a pread/pwrite of the rest, `done` bytes in — until `n`
// bytes have moved. 0, or -errno; -EIO when the other side ends early.
template <typename Io>
int io_all(size_t n, Io io) noexcept {
  size_t done = 0;
  while (done < n) {
    const ssize_t r = io(done);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (r == 0) return -EIO;
    done += static_cast<size_t>(r);
  }
  return 0;
}

// All `n` bytes at `pos`, with io_all's results.
inline int pwrite_all(int fd, const std::byte* src, size_t n, uint64_t pos) noexcept {
  return io_all(n, [&](size_t done) {
    return ::pwrite(fd, src + done, n - done, static_cast<off_t>(pos + done));
  });
}

inline int pread_all(int fd, std::byte* dst, size_t n, uint64_t pos) noexcept {
  return io_all(n, [&](size_t done) {
    return ::pread(fd, dst + done, n - done, static_cast<off_t>(pos + done));
  });
}

}  // namespace ublkd
