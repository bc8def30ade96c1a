#include "recovery/state_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <map>

#include <nlohmann/json.hpp>

#include "atomic_file.h"
#include "base/unique_fd.h"
#include "device/device.h"

namespace ublkd {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Version 2 added "identity" and "removed" and lets "dev_id" be null;
// version 1 records are still read (identity 0).
constexpr int kRecordVersion = 2;
constexpr int kOldestRecordVersion = 1;

}  // namespace

std::string record_text(const DeviceRecord& r) {
  DeviceSpec clean = r.spec;
  clean.source.clear();
  // The identity as a hex string: JSON tools (jq among them) round numbers
  // past 2^53.
  const json j = {{"version", kRecordVersion},
                  {"dev_id", r.dev_id ? json(*r.dev_id) : json(nullptr)},
                  {"identity", format_identity(r.identity)},
                  {"removed", r.removed},
                  {"persistent", r.persistent},
                  {"source", r.spec.source},
                  {"spec", to_json(clean)}};
  return j.dump(2) + "\n";
}

Result<DeviceRecord> parse_record(std::string_view text, const std::string& origin) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Error(EINVAL, origin + ": not a JSON object");
  auto field = [&](const char* key) -> const json* {
    auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
  };
  const json* version = field("version");
  if (version == nullptr || !version->is_number_integer() ||
      version->get<int64_t>() < kOldestRecordVersion || version->get<int64_t>() > kRecordVersion) {
    return Error(EINVAL, origin + ": version: expected " + std::to_string(kOldestRecordVersion) +
                             " to " + std::to_string(kRecordVersion));
  }
  const bool v1 = version->get<int64_t>() == 1;
  DeviceRecord r;
  const json* id = field("dev_id");
  if (id != nullptr && id->is_null() && !v1) {
    r.dev_id.reset();
  } else if (id == nullptr || !id->is_number_unsigned() || id->get<uint64_t>() >= UINT32_MAX) {
    return Error(EINVAL, origin + ": dev_id: expected a device id" + (v1 ? "" : " or null"));
  } else {
    r.dev_id = id->get<uint32_t>();
  }
  if (!v1) {
    const json* identity = field("identity");
    auto parsed = identity != nullptr && identity->is_string()
                      ? parse_identity(identity->get<std::string>())
                      : std::nullopt;
    if (!parsed) return Error(EINVAL, origin + ": identity: expected 16 hex digits, not 0");
    r.identity = *parsed;
    const json* removed = field("removed");
    if (removed == nullptr || !removed->is_boolean())
      return Error(EINVAL, origin + ": removed: expected true or false");
    r.removed = removed->get<bool>();
    if (r.removed && !r.dev_id)
      return Error(EINVAL, origin + ": dev_id: a removed device needs its id");
  }
  const json* persistent = field("persistent");
  if (persistent == nullptr || !persistent->is_boolean())
    return Error(EINVAL, origin + ": persistent: expected true or false");
  r.persistent = persistent->get<bool>();
  const json* source = field("source");
  if (source == nullptr || !source->is_string())
    return Error(EINVAL, origin + ": source: expected a string");
  const json* spec = field("spec");
  if (spec == nullptr) return Error(EINVAL, origin + ": spec: missing");
  auto parsed = parse_device_spec(*spec, origin + ": spec", SpecDefaults{});
  if (!parsed) return parsed.error();
  r.spec = std::move(parsed).value();
  r.spec.source = source->get<std::string>();
  return r;
}

std::vector<std::pair<DeviceRecord, std::string>> take_superseded(
    std::vector<DeviceRecord>& records) {
  std::map<uint32_t, size_t> newest;  // id -> index into records
  for (size_t i = 0; i < records.size(); ++i) {
    const DeviceRecord& r = records[i];
    if (r.identity != 0 || !r.dev_id) continue;
    auto [it, added] = newest.emplace(*r.dev_id, i);
    if (!added && r.written > records[it->second].written) it->second = i;
  }
  std::vector<std::pair<DeviceRecord, std::string>> superseded;
  std::vector<DeviceRecord> keep;
  for (size_t i = 0; i < records.size(); ++i) {
    const DeviceRecord& r = records[i];
    const size_t winner = r.identity == 0 && r.dev_id ? newest.at(*r.dev_id) : i;
    if (winner == i)
      keep.push_back(r);
    else
      superseded.emplace_back(r, records[winner].spec.name);
  }
  records = std::move(keep);
  return superseded;
}

Result<UniqueFd> lock_state_dir(const fs::path& state_dir) {
  std::error_code ec;
  fs::create_directories(state_dir, ec);
  if (ec) return Error(ec.value(), "create state dir " + state_dir.string());
  const fs::path p = state_dir / "ublkd.lock";
  UniqueFd fd(::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return errno_error("open " + p.string());
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return errno_error("lock " + p.string());
    char buf[32] = {};
    const ssize_t n = ::pread(fd.get(), buf, sizeof(buf) - 1, 0);
    std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("?");
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    return Error(EBUSY, "state dir " + state_dir.string() + " is in use by another ublkd (pid " +
                            pid + "); give each ublkd its own --state-dir");
  }
  // The pid is only for that message; the lock is what counts.
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd.get(), 0) != 0 || ::pwrite(fd.get(), pid.data(), pid.size(), 0) < 0)
    return errno_error("write " + p.string());
  return fd;
}

std::optional<uint64_t> parse_identity(const std::string& text) {
  if (text.size() != 16) return std::nullopt;
  uint64_t v = 0;
  for (char c : text) {
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else
      return std::nullopt;
    v = v << 4 | static_cast<uint64_t>(d);
  }
  if (v == 0) return std::nullopt;
  return v;
}

Result<void> StateStore::save(const DeviceRecord& r) const {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) return Error(ec.value(), "create " + dir_.string());
  // A record is what stands between a crash and a device nobody can find
  // again: never torn, never empty.
  return write_file_atomically(path(r.spec.name), record_text(r), 0600);
}

Result<void> StateStore::mark_recovering(const std::string& name) const {
  const fs::path p = dir_ / (name + ".recovering");
  UniqueFd fd(::open(p.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return errno_error("create " + p.string());
  if (::fsync(fd.get()) != 0) return errno_error("fsync " + p.string());
  UniqueFd dfd(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd || ::fsync(dfd.get()) != 0) return errno_error("fsync " + dir_.string());
  return {};
}

bool StateStore::recovering_marked(const std::string& name) const {
  return ::access((dir_ / (name + ".recovering")).c_str(), F_OK) == 0;
}

Result<void> StateStore::clear_recovering(const std::string& name) const {
  const fs::path p = dir_ / (name + ".recovering");
  if (::unlink(p.c_str()) != 0 && errno != ENOENT) return errno_error("remove " + p.string());
  return {};
}

Result<void> StateStore::remove(const std::string& name) const {
  const fs::path p = path(name);
  if (::unlink(p.c_str()) != 0 && errno != ENOENT) return errno_error("remove " + p.string());
  return {};
}

std::vector<DeviceRecord> StateStore::load(std::vector<std::string>& problems) const {
  std::vector<DeviceRecord> out;
  std::error_code ec;
  if (!fs::exists(dir_, ec)) return out;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const fs::path& p = entry.path();
    if (p.extension() == ".json" && p.filename().string().front() != '.') files.push_back(p);
  }
  if (ec) {
    problems.push_back("read " + dir_.string() + ": " + ec.message());
    return out;
  }
  std::sort(files.begin(), files.end());
  for (const fs::path& p : files) {
    UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
      problems.push_back(errno_error("open " + p.string()).to_string());
      continue;
    }
    std::string text;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd.get(), buf, sizeof(buf))) > 0) text.append(buf, static_cast<size_t>(n));
    if (n < 0) {
      problems.push_back(errno_error("read " + p.string()).to_string());
      continue;
    }
    auto r = parse_record(text, p.string());
    if (!r) {
      problems.push_back(r.error().message());
      continue;
    }
    if (r->spec.name != p.stem().string()) {
      problems.push_back(p.string() + ": spec.name: \"" + r->spec.name +
                         "\" does not match the file name");
      continue;
    }
    r->written = fs::last_write_time(p, ec);
    out.push_back(std::move(r).value());
  }
  return out;
}

}  // namespace ublkd
