#include "atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <string>

#include "base/unique_fd.h"

namespace ublkd {

Result<void> write_file_atomically(const std::filesystem::path& path, std::string_view text,
                                   mode_t mode) {
  const std::filesystem::path dir = path.parent_path();
  // Appended rather than "." + ...: GCC 12 at -O3 takes that for an
  // overlapping copy (a false -Wrestrict).
  std::string name = ".";
  name += path.filename().string();
  name += ".tmp";
  name += std::to_string(::getpid());
  const std::filesystem::path tmp = dir / name;
  auto fail = [&](const std::string& what) {
    Error e = errno_error(what);
    ::unlink(tmp.c_str());
    return e;
  };
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
    if (!fd) return errno_error("create " + tmp.string());
    size_t off = 0;
    while (off < text.size()) {
      const ssize_t n = ::write(fd.get(), text.data() + off, text.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return fail("write " + tmp.string());
      off += static_cast<size_t>(n);
    }
    // The rename below must not expose a file whose contents are not yet
    // on disk.
    if (::fsync(fd.get()) != 0) return fail("fsync " + tmp.string());
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return fail("rename " + tmp.string() + " to " + path.string());
  UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd || ::fsync(dfd.get()) != 0) return errno_error("fsync " + dir.string());
  return {};
}

}  // namespace ublkd
