// Repeats a positional read or write until all of it is done: the kernel
// may move fewer bytes than asked (signals, page boundaries of the other
// side), and EINTR is not an error.
#pragma once

#include <sys/types.h>

#include <cerrno>
#include <cstddef>

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

}  // namespace ublkd
