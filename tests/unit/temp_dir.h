// A fresh directory under $TMPDIR for one test, removed with everything in
// it when the test ends (also when a REQUIRE ends it early).
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include <catch2/catch.hpp>

namespace ublkd::test {

class TempDir {
 public:
  // Under BASE instead of $TMPDIR where a test needs a file system of its
  // own kind (tmpfs, one that refuses O_DIRECT).
  explicit TempDir(const std::filesystem::path& base = std::filesystem::temp_directory_path()) {
    std::string tmpl = (base / "ublkd-test-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // The path of NAME in the directory, as the string most APIs take.
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  // Writes TEXT to DIR/RELATIVE, creating parent directories.
  std::filesystem::path write(const std::filesystem::path& relative,
                              const std::string& text) const {
    const std::filesystem::path target = path_ / relative;
    std::filesystem::create_directories(target.parent_path());
    std::ofstream out(target, std::ios::binary);
    out << text;
    REQUIRE(out.good());
    return target;
  }

 private:
  std::filesystem::path path_;
};

}  // namespace ublkd::test
