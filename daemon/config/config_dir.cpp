#include "config/config_dir.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <system_error>

namespace ublkd {

namespace {

namespace fs = std::filesystem;

// The whole file, or a problem (origin = path) saying why it could not be read.
std::optional<std::string> read_file(const fs::path& path, std::vector<ConfigProblem>& problems) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    problems.push_back(
        {path.string(), "", std::string("cannot read: ") + std::strerror(err != 0 ? err : EIO)});
    return std::nullopt;
  }
  std::string text;
  text.resize(kMaxConfigFileSize + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) {
    problems.push_back({path.string(), "", "cannot read: I/O error"});
    return std::nullopt;
  }
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxConfigFileSize) {
    problems.push_back({path.string(), "",
                        "larger than " + std::to_string(kMaxConfigFileSize) +
                            " bytes; this is not a configuration file"});
    return std::nullopt;
  }
  return text;
}

bool is_drop_in(const fs::path& path) {
  const std::string name = path.filename().string();
  return !name.empty() && name.front() != '.' && path.extension() == ".json";
}

// The drop-ins of devices.d in lexical order, or nothing (with a problem)
// when the directory exists but cannot be listed.
std::vector<fs::path> list_drop_ins(const fs::path& devices_dir,
                                    std::vector<ConfigProblem>& problems) {
  std::vector<fs::path> files;
  std::error_code ec;
  const fs::file_status status = fs::status(devices_dir, ec);
  if (status.type() == fs::file_type::not_found) return files;
  if (ec) {
    problems.push_back({devices_dir.string(), "", "cannot access: " + ec.message()});
    return files;
  }
  if (!fs::is_directory(status)) {
    problems.push_back({devices_dir.string(), "", "not a directory"});
    return files;
  }
  fs::directory_iterator it(devices_dir, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    if (is_drop_in(it->path())) files.push_back(it->path());
  }
  if (ec) {
    problems.push_back({devices_dir.string(), "", "cannot list: " + ec.message()});
    return {};
  }
  // Byte order of the names, not the locale's collation, so the order is the
  // same for everyone (and matches `LC_ALL=C ls`).
  std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
    return a.filename().string() < b.filename().string();
  });
  return files;
}

}  // namespace

Result<LoadedConfig> load_config_dir(const fs::path& dir) {
  std::error_code ec;
  const fs::file_status status = fs::status(dir, ec);
  if (status.type() == fs::file_type::not_found) {
    return Error(ENOENT, "configuration directory " + dir.string());
  }
  if (ec) return Error(ec.value(), "configuration directory " + dir.string());
  if (!fs::is_directory(status)) return Error(ENOTDIR, "configuration directory " + dir.string());

  LoadedConfig loaded;

  const fs::path daemon_file = dir / kDaemonConfigFile;
  if (fs::symlink_status(daemon_file, ec).type() != fs::file_type::not_found) {
    const size_t before = loaded.problems.size();
    if (fs::is_directory(daemon_file, ec)) {
      loaded.problems.push_back({daemon_file.string(), "", "is a directory, expected a file"});
    } else if (std::optional<std::string> text = read_file(daemon_file, loaded.problems)) {
      loaded.daemon = check_daemon_config(*text, daemon_file.string(), loaded.problems);
    }
    loaded.daemon_config_ok = loaded.problems.size() == before;
  }

  const SpecDefaults defaults = loaded.daemon.spec_defaults();
  std::map<std::string, std::string, std::less<>> defined_in;  // device name -> file
  for (const fs::path& file : list_drop_ins(dir / kDevicesDir, loaded.problems)) {
    const std::string origin = file.string();
    if (fs::is_directory(file, ec)) {
      loaded.problems.push_back({origin, "", "is a directory, expected a file"});
      continue;
    }
    std::optional<std::string> text = read_file(file, loaded.problems);
    if (!text) continue;
    std::optional<DeviceSpec> spec = check_device_spec(*text, origin, defaults, loaded.problems);
    if (!spec) continue;
    auto [it, inserted] = defined_in.emplace(spec->name, origin);
    if (!inserted) {
      loaded.problems.push_back({origin, "name",
                                 "device \"" + spec->name + "\" is already defined in " +
                                     it->second + "; this file is skipped"});
      continue;
    }
    loaded.devices.push_back(std::move(*spec));
  }
  return loaded;
}

}  // namespace ublkd
