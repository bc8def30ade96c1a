#include "recovery/state_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "atomic_file.h"
#include "base/unique_fd.h"

namespace ublkd {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kRecordVersion = 1;

}  // namespace

std::string record_text(const DeviceRecord& r) {
  DeviceSpec clean = r.spec;
  clean.source.clear();
  const json j = {{"version", kRecordVersion},
                  {"dev_id", r.dev_id},
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
      version->get<int64_t>() != kRecordVersion) {
    return Error(EINVAL, origin + ": version: expected " + std::to_string(kRecordVersion));
  }
  DeviceRecord r;
  const json* id = field("dev_id");
  if (id == nullptr || !id->is_number_unsigned() || id->get<uint64_t>() >= UINT32_MAX)
    return Error(EINVAL, origin + ": dev_id: expected a device id");
  r.dev_id = id->get<uint32_t>();
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
    out.push_back(std::move(r).value());
  }
  return out;
}

}  // namespace ublkd
