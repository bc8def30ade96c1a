#include "block_users.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <system_error>

namespace ublkd {

namespace fs = std::filesystem;

namespace {

std::string first_line(const fs::path& p) {
  std::ifstream in(p);
  std::string line;
  std::getline(in, line);
  return line;
}

// The disk and its partitions, by "major:minor".
std::map<std::string, std::string> disk_and_partitions(const std::string& disk) {
  std::map<std::string, std::string> out;
  const fs::path dir = fs::path("/sys/class/block") / disk;
  if (const std::string dev = first_line(dir / "dev"); !dev.empty()) out[dev] = disk;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(disk, 0) != 0 || !fs::exists(it->path() / "partition")) continue;
    if (const std::string dev = first_line(it->path() / "dev"); !dev.empty()) out[dev] = name;
  }
  return out;
}

void add_mounts(const std::map<std::string, std::string>& devs, std::vector<std::string>& out) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    // ID PARENT MAJOR:MINOR ROOT MOUNTPOINT ...
    std::istringstream fields(line);
    std::string id, parent, dev, root, point;
    if (!(fields >> id >> parent >> dev >> root >> point)) continue;
    if (auto it = devs.find(dev); it != devs.end())
      out.push_back(it->second + " mounted on " + point);
  }
}

void add_holders(const std::map<std::string, std::string>& devs, std::vector<std::string>& out) {
  for (const auto& [dev, name] : devs) {
    std::error_code ec;
    const fs::path dir = fs::path("/sys/class/block") / name / "holders";
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
      out.push_back(name + " held by " + it->path().filename().string());
  }
}

void add_processes(const std::map<std::string, std::string>& devs, std::vector<std::string>& out) {
  // "ublkb3 open in fio" -> "412, 413": one line per device and command.
  std::map<std::string, std::string> users;
  std::map<std::string, std::string> by_path;
  for (const auto& [dev, name] : devs) by_path["/dev/" + name] = name;
  const std::string self = std::to_string(::getpid());
  std::error_code ec;
  for (fs::directory_iterator proc("/proc", ec), end; !ec && proc != end; proc.increment(ec)) {
    const std::string pid = proc->path().filename().string();
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos || pid == self)
      continue;
    std::error_code fd_ec;
    for (fs::directory_iterator fd(proc->path() / "fd", fd_ec), fd_end; !fd_ec && fd != fd_end;
         fd.increment(fd_ec)) {
      std::error_code link_ec;
      const fs::path target = fs::read_symlink(fd->path(), link_ec);
      if (link_ec) continue;
      auto it = by_path.find(target.string());
      if (it == by_path.end()) continue;
      std::string& pids = users[it->second + " open in " + first_line(proc->path() / "comm")];
      pids += (pids.empty() ? "" : ", ") + pid;
      break;  // once per process
    }
  }
  for (const auto& [what, pids] : users)
    out.push_back(what + (pids.find(',') == std::string::npos ? " (pid " : " (pids ") + pids + ")");
}

}  // namespace

std::vector<std::string> block_device_users(const std::string& disk) {
  const auto devs = disk_and_partitions(disk);
  std::vector<std::string> out;
  if (devs.empty()) return out;
  add_mounts(devs, out);
  add_holders(devs, out);
  add_processes(devs, out);
  return out;
}

}  // namespace ublkd
