// Replacing a small file so that a crash at any moment leaves either the
// old contents or the new ones, never a torn or empty file: the drop-ins
// `add --persist` writes and the state records a recovery depends on.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string_view>

#include "base/error.h"

namespace ublkd {

// Writes `text` to a temporary file next to `path`, fsyncs it, renames it
// over `path` and fsyncs the directory. The directory must exist.
Result<void> write_file_atomically(const std::filesystem::path& path, std::string_view text,
                                   mode_t mode);

}  // namespace ublkd
