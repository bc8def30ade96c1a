// What ublkd keeps for a later process to recover its devices from: the
// state records and the mem devices' memory (directory and fd store).
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "backend/mem_backend.h"
#include "device/device.h"
#include "manager.h"
#include "recovery/mem_store.h"
#include "recovery/state_store.h"
#include "skip.h"

namespace fs = std::filesystem;
using ublkd::DeviceRecord;
using ublkd::MemStore;
using ublkd::StateStore;
using ublkd::UniqueFd;

namespace {

// A fresh directory under /dev/shm (tmpfs, as a state dir must be for mem
// devices), removed again at the end.
struct TempDir {
  TempDir() {
    char tmpl[] = "/dev/shm/ublkd-test-state-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path path;
};

DeviceRecord sample_record() {
  auto spec = ublkd::parse_device_spec(
      R"({"name": "d0", "backend": {"type": "mem", "size": "1MiB"}, "queues": 2})", "",
      ublkd::SpecDefaults{});
  REQUIRE(spec.ok());
  DeviceRecord r;
  r.spec = spec.value();
  r.spec.source = "/etc/ublkd/devices.d/d0.json";
  r.dev_id = 7;
  r.identity = 0x0123456789abcdefull;
  r.persistent = true;
  return r;
}

void write_file(const fs::path& p, const std::string& text) {
  std::ofstream(p) << text;
}

}  // namespace

TEST_CASE("state records: saved and loaded back unchanged", "[recovery]") {
  TempDir dir;
  StateStore store(dir.path / "devices");
  const DeviceRecord r = sample_record();
  REQUIRE(store.save(r).ok());
  // Saving again replaces the record.
  DeviceRecord r2 = r;
  r2.dev_id = 8;
  REQUIRE(store.save(r2).ok());

  std::vector<std::string> problems;
  auto loaded = store.load(problems);
  CHECK(problems.empty());
  REQUIRE(loaded.size() == 1);
  CHECK(loaded[0].dev_id == 8);
  CHECK(loaded[0].identity == 0x0123456789abcdefull);
  CHECK_FALSE(loaded[0].removed);
  CHECK(loaded[0].persistent);
  CHECK(loaded[0].spec == r.spec);
  CHECK(loaded[0].spec.source == "/etc/ublkd/devices.d/d0.json");

  REQUIRE(store.remove("d0").ok());
  REQUIRE(store.remove("d0").ok());  // already gone counts as done
  CHECK(store.load(problems).empty());
}

TEST_CASE("state records: no id before ADD_DEV, removed after DEL_DEV", "[recovery]") {
  TempDir dir;
  StateStore store(dir.path / "devices");
  DeviceRecord r = sample_record();
  r.dev_id.reset();
  REQUIRE(store.save(r).ok());
  std::vector<std::string> problems;
  auto loaded = store.load(problems);
  REQUIRE(loaded.size() == 1);
  CHECK_FALSE(loaded[0].dev_id.has_value());
  CHECK(loaded[0].identity == r.identity);
  // The identity is a string of hex digits: JSON tools round big numbers.
  auto j = nlohmann::json::parse(ublkd::record_text(r));
  CHECK(j["identity"] == "0123456789abcdef");
  CHECK(j["dev_id"].is_null());
  CHECK(j["version"] == 2);

  r.dev_id = 3;
  r.removed = true;
  REQUIRE(store.save(r).ok());
  loaded = store.load(problems);
  REQUIRE(loaded.size() == 1);
  CHECK(loaded[0].removed);
  CHECK(loaded[0].dev_id == 3);
  CHECK(problems.empty());
}

TEST_CASE("state records: version 1 (before identities) is still read, as identity 0",
          "[recovery]") {
  TempDir dir;
  const fs::path d = dir.path / "devices";
  fs::create_directories(d);
  auto j = nlohmann::json::parse(ublkd::record_text(sample_record()));
  j["version"] = 1;
  j.erase("identity");
  j.erase("removed");
  write_file(d / "d0.json", j.dump());
  StateStore store(d);
  std::vector<std::string> problems;
  auto loaded = store.load(problems);
  INFO((problems.empty() ? std::string() : problems[0]));
  REQUIRE(loaded.size() == 1);
  CHECK(loaded[0].identity == 0);
  CHECK(loaded[0].dev_id == 7);
  CHECK_FALSE(loaded[0].removed);
}

TEST_CASE("state records: of version-1 records naming one id, only the newest counts",
          "[recovery]") {
  using Clock = fs::file_time_type::clock;
  auto rec = [](const std::string& name, std::optional<uint32_t> id, uint64_t identity, int age) {
    DeviceRecord r = sample_record();
    r.spec.name = name;
    r.dev_id = id;
    r.identity = identity;
    r.written = Clock::now() - std::chrono::seconds(age);
    return r;
  };
  std::vector<DeviceRecord> records = {
      rec("stale", 0, 0, 100),  // deleted long ago, its id given to "healthy"
      rec("healthy", 0, 0, 10),
      rec("older", 0, 0, 200),
      rec("alone", 1, 0, 300),    // the only record for id 1
      rec("proven", 0, 42, 400),  // has an identity: the kernel decides
      rec("noid", std::nullopt, 43, 500),
  };
  auto superseded = ublkd::take_superseded(records);
  std::vector<std::string> kept;
  for (const auto& r : records) kept.push_back(r.spec.name);
  CHECK(kept == std::vector<std::string>{"healthy", "alone", "proven", "noid"});
  REQUIRE(superseded.size() == 2);
  CHECK(superseded[0].first.spec.name == "stale");
  CHECK(superseded[0].second == "healthy");
  CHECK(superseded[1].first.spec.name == "older");
  CHECK(superseded[1].second == "healthy");
}

TEST_CASE("identities: 16 lower-case hex digits, never 0", "[recovery]") {
  CHECK(ublkd::parse_identity("0123456789abcdef") == 0x0123456789abcdefull);
  CHECK(ublkd::parse_identity(ublkd::format_identity(~0ull)) == ~0ull);
  CHECK_FALSE(ublkd::parse_identity("0000000000000000"));
  CHECK_FALSE(ublkd::parse_identity("0123456789ABCDEF"));
  CHECK_FALSE(ublkd::parse_identity("123456789abcdef"));
  CHECK_FALSE(ublkd::parse_identity("0123456789abcdefa"));
  CHECK_FALSE(ublkd::parse_identity("0x23456789abcdef"));
  // New ones are nonzero and differ.
  std::set<uint64_t> seen;
  for (int i = 0; i < 1000; ++i) {
    const uint64_t v = ublkd::Device::new_identity();
    CHECK(v != 0);
    seen.insert(v);
  }
  CHECK(seen.size() == 1000);
}

TEST_CASE("state dir lock: a second ublkd on one state dir is refused, naming the holder",
          "[recovery]") {
  TempDir dir;
  auto first = ublkd::lock_state_dir(dir.path / "state");
  REQUIRE(first.ok());
  // flock locks belong to the open file: a second open in this process
  // conflicts just as another process would.
  auto second = ublkd::lock_state_dir(dir.path / "state");
  REQUIRE_FALSE(second.ok());
  CHECK(second.error().code() == EBUSY);
  CHECK_THAT(
      second.error().message(),
      Catch::Contains("state dir " + (dir.path / "state").string() +
                      " is in use by another ublkd (pid " + std::to_string(::getpid()) + ")"));
  first.value().reset();
  CHECK(ublkd::lock_state_dir(dir.path / "state").ok());
}

TEST_CASE("state records: a missing directory holds no records", "[recovery]") {
  StateStore store("/nonexistent-ublkd-test/devices");
  std::vector<std::string> problems;
  CHECK(store.load(problems).empty());
  CHECK(problems.empty());
}

TEST_CASE("state records: unreadable ones are reported by file and field", "[recovery]") {
  TempDir dir;
  const fs::path d = dir.path / "devices";
  fs::create_directories(d);
  StateStore store(d);
  REQUIRE(store.save(sample_record()).ok());
  std::string good = ublkd::record_text(sample_record());

  write_file(d / "junk.json", "{not json");
  write_file(d / "old.json", R"({"version": 0})");
  write_file(d / "noid.json", R"({"version": 1, "persistent": false, "source": "", "spec": {}})");
  auto noidentity = nlohmann::json::parse(good);
  noidentity["spec"]["name"] = "noidentity";
  noidentity["identity"] = "0000000000000000";
  write_file(d / "noidentity.json", noidentity.dump());
  auto removed_noid = nlohmann::json::parse(good);
  removed_noid["spec"]["name"] = "removednoid";
  removed_noid["removed"] = true;
  removed_noid["dev_id"] = nullptr;
  write_file(d / "removednoid.json", removed_noid.dump());
  // A record under another device's name is not trusted.
  write_file(d / "other.json", good);
  auto badspec = nlohmann::json::parse(good);
  badspec["spec"]["queues"] = 0;
  badspec["spec"]["name"] = "badspec";
  write_file(d / "badspec.json", badspec.dump());
  write_file(d / ".d0.json.tmp", good);  // a save cut short: not a record

  std::vector<std::string> problems;
  auto loaded = store.load(problems);
  REQUIRE(loaded.size() == 1);
  CHECK(loaded[0].spec.name == "d0");
  std::string all;
  for (const auto& p : problems) all += p + "\n";
  INFO(all);
  REQUIRE(problems.size() == 7);
  CHECK_THAT(all, Catch::Contains((d / "junk.json").string() + ": not a JSON object"));
  CHECK_THAT(all, Catch::Contains((d / "old.json").string() + ": version: expected 1 to 2"));
  CHECK_THAT(all, Catch::Contains((d / "noidentity.json").string() +
                                  ": identity: expected 16 hex digits, not 0"));
  CHECK_THAT(all, Catch::Contains((d / "removednoid.json").string() +
                                  ": dev_id: a removed device needs its id"));
  CHECK_THAT(all, Catch::Contains((d / "noid.json").string() + ": dev_id: expected a device id"));
  CHECK_THAT(all, Catch::Contains((d / "other.json").string() +
                                  ": spec.name: \"d0\" does not match the file name"));
  CHECK_THAT(all, Catch::Contains("queues"));
}

TEST_CASE("mem store (directory): memory outlives its fd and comes back with its data",
          "[recovery]") {
  TempDir dir;
  auto store = MemStore::directory(dir.path / "mem");
  const uint64_t size = 1 << 20;
  {
    auto fd = store->create("m", size);
    REQUIRE(fd.ok());
    auto b = ublkd::MemBackend::adopt(std::move(fd).value(), size);
    REQUIRE(b.ok());
    std::vector<char> data(4096, 'x');
    ublkd::IoRequest w{ublkd::IoOp::kWrite, 0, 65536, 4096, data.data(), 0, 0};
    REQUIRE(b.value()->handle(w) == 4096);
  }  // the backend and its fd are gone, as when the process dies

  auto fd = store->reopen("m", size);
  REQUIRE(fd.ok());
  auto b = ublkd::MemBackend::adopt(std::move(fd).value(), size);
  REQUIRE(b.ok());
  std::vector<char> back(4096, 0);
  ublkd::IoRequest r{ublkd::IoOp::kRead, 0, 65536, 4096, back.data(), 0, 0};
  REQUIRE(b.value()->handle(r) == 4096);
  CHECK(back == std::vector<char>(4096, 'x'));

  // What was kept must hold the spec's size; it may hold more (a device
  // shrunk live keeps its memfd's length).
  auto wrong = store->reopen("m", size * 2);
  REQUIRE_FALSE(wrong.ok());
  CHECK(wrong.error().code() == EINVAL);
  CHECK_THAT(wrong.error().message(),
             Catch::Contains("holds 1048576 bytes, fewer than the spec's 2097152"));
  CHECK(store->reopen("m", size / 2).ok());

  // create() starts from zeros again, whatever was kept.
  {
    auto again = store->create("m", size);
    REQUIRE(again.ok());
    auto z = ublkd::MemBackend::adopt(std::move(again).value(), size);
    REQUIRE(z.ok());
    REQUIRE(z.value()->handle(r) == 4096);
    CHECK(back == std::vector<char>(4096, 0));
  }

  store->drop("m");
  auto gone = store->reopen("m", size);
  REQUIRE_FALSE(gone.ok());
  CHECK(gone.error().code() == ENOENT);
}

TEST_CASE("mem store (directory): what no record claims is dropped", "[recovery]") {
  TempDir dir;
  auto store = MemStore::directory(dir.path / "mem");
  REQUIRE(store->create("keep", 4096).ok());
  REQUIRE(store->create("stale", 4096).ok());
  auto dropped = store->drop_unclaimed({"keep"});
  CHECK(dropped == std::vector<std::string>{"stale"});
  CHECK(fs::exists(dir.path / "mem" / "keep"));
  CHECK_FALSE(fs::exists(dir.path / "mem" / "stale"));
}

TEST_CASE("mem store (directory): refused outside tmpfs rather than spilling to disk",
          "[recovery][env][env-var-tmp-on-disk]") {
  char tmpl[] = "/var/tmp/ublkd-test-state-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const fs::path d = tmpl;
  struct Cleanup {
    fs::path p;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(p, ec);
    }
  } cleanup{d};
  auto store = MemStore::directory(d / "mem");
  auto fd = store->create("m", 4096);
  // /var/tmp is tmpfs on some machines; the refusal only applies elsewhere.
  if (fd.ok()) {
    SKIP_TEST("/var/tmp is on tmpfs here; the refusal is not exercised");
  }
  CHECK(fd.error().code() == EXDEV);
  CHECK_THAT(fd.error().message(), Catch::Contains("is not on tmpfs"));
}

TEST_CASE("mem store (fd store): memfds are handed to systemd by name and taken back",
          "[recovery]") {
  std::vector<std::string> sent;
  std::vector<int> sent_fds;
  auto notify = [&](const std::string& message, int fd) {
    sent.push_back(message);
    sent_fds.push_back(fd < 0 ? -1 : ::dup(fd));
    return 1;
  };
  auto store = MemStore::fd_store({}, notify);
  auto fd = store->create("disk0", 8192);
  REQUIRE(fd.ok());
  REQUIRE(sent.size() >= 1);
  // create() first drops a stale one of that name, then stores the new one.
  CHECK(sent.back() == "FDSTORE=1\nFDNAME=mem-disk0");
  REQUIRE(sent_fds.back() >= 0);
  UniqueFd stored(sent_fds.back());
  struct stat a {
  }, b{};
  REQUIRE(::fstat(fd->get(), &a) == 0);
  REQUIRE(::fstat(stored.get(), &b) == 0);
  CHECK(a.st_ino == b.st_ino);
  CHECK(b.st_size == 8192);

  // The next process gets it back from systemd under the same name.
  std::map<std::string, UniqueFd> handed_back;
  handed_back.emplace("mem-disk0", std::move(stored));
  handed_back.emplace("mem-stale", UniqueFd(::memfd_create("s", MFD_CLOEXEC)));
  sent.clear();
  auto next = MemStore::fd_store(std::move(handed_back), notify);
  CHECK(next->drop_unclaimed({"disk0"}) == std::vector<std::string>{"stale"});
  CHECK(sent == std::vector<std::string>{"FDSTOREREMOVE=1\nFDNAME=mem-stale"});
  auto wrong = next->reopen("disk0", 16384);
  CHECK_FALSE(wrong.ok());
  // A failed reopen consumed it: recovery of that device is over either way.
  auto none = next->reopen("disk0", 8192);
  REQUIRE_FALSE(none.ok());
  CHECK(none.error().code() == ENOENT);
  CHECK_THAT(none.error().message(), Catch::Contains("FileDescriptorStoreMax="));
}

TEST_CASE("mem store (fd store): no notify socket is an error, not lost data", "[recovery]") {
  auto store = MemStore::fd_store({}, [](const std::string&, int) { return 0; });
  auto fd = store->create("d", 4096);
  REQUIRE_FALSE(fd.ok());
  CHECK(fd.error().code() == ENOTCONN);
}

TEST_CASE("make_backend: a mem device with recovery takes its memory from the store",
          "[recovery]") {
  TempDir dir;
  auto store = MemStore::directory(dir.path / "mem");
  auto spec = ublkd::parse_device_spec(
      R"({"name": "m1", "backend": {"type": "mem", "size": 65536}})", "", ublkd::SpecDefaults{});
  REQUIRE(spec.ok());
  auto b = ublkd::make_backend(spec.value(), store.get(), /*reopen=*/false);
  REQUIRE(b.ok());
  CHECK(fs::exists(dir.path / "mem" / "m1"));
  auto again = ublkd::make_backend(spec.value(), store.get(), /*reopen=*/true);
  REQUIRE(again.ok());

  // Recovery off: a plain memfd, nothing kept.
  auto off = spec.value();
  off.name = "m2";
  off.recovery = false;
  REQUIRE(ublkd::make_backend(off, store.get(), false).ok());
  CHECK_FALSE(fs::exists(dir.path / "mem" / "m2"));
  auto missing = ublkd::make_backend(off, store.get(), true);
  CHECK(missing.ok());  // recovery off never reopens anything

  off.recovery = true;
  auto lost = ublkd::make_backend(off, store.get(), true);
  REQUIRE_FALSE(lost.ok());
  CHECK_THAT(lost.error().to_string(), Catch::Contains("memory kept by the last ublkd"));
}
