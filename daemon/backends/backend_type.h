// Each kind of backend a device spec can name ("type": "mem", "file",
// "null") is described once, by a BackendType: the keys of its "backend"
// object and how they are checked, the ublkctl options that set them, how
// it is opened, what `list` and `info` show of it, and what the daemon may
// count on it for. Every such description is one row of the table in
// registry.cpp, and nothing else in ublkd or ublkctl names a backend type:
// a new backend is its own file here, its row, and its docs
// (docs/architecture.md walks through null as the example).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "base/error.h"
#include "base/unique_fd.h"
#include "config/device_spec.h"
#include "config/json_fields.h"

namespace ublkd {

// Where a backend that keeps its memory across restarts gets that memory
// (MemStore: systemd's fd store or a directory on tmpfs).
class KeptMemory {
 public:
  virtual ~KeptMemory() = default;
  // `size` bytes of zeros for a new device; whatever was kept under the
  // name before is dropped.
  virtual Result<UniqueFd> create(const std::string& name, uint64_t size) = 0;
  // What an earlier process kept for the device.
  virtual Result<UniqueFd> reopen(const std::string& name, uint64_t size) = 0;
  // Where that is, for messages.
  virtual std::string describe() const = 0;
};

// What opening a backend may use besides the spec.
struct BackendEnv {
  // Null: nothing is kept, memory dies with the process.
  KeptMemory* memory = nullptr;
  // The device is being recovered: reopen what was kept rather than start
  // afresh.
  bool reopen = false;
};

// A ublkctl `add` option that sets one key of the "backend" object.
struct BackendFlag {
  enum class Sets {
    kValue,  // the value as typed, a string (the daemon's message quotes it)
    kPath,   // the value made absolute against ublkctl's working directory
    kTrue,   // no value: the key is true
    kFalse,  // no value: the key is false
  };
  std::string_view name;  // "path" for --path
  std::string_view key;   // the key it sets
  Sets sets;
  // The option as `ublkctl add --help` shows it ("--path FILE") and its
  // explanation; a "\n" in it starts a continuation line.
  std::string_view usage;
  std::string_view help;
};

// What the daemon may count on a backend type for.
struct BackendCaps {
  // Serving a request a second time is harmless (READ, WRITE, DISCARD,
  // WRITE_ZEROES and FLUSH are idempotent): the kernel may then re-send the
  // requests a crashed ublkd had taken (UBLK_F_USER_RECOVERY_REISSUE)
  // instead of failing them.
  bool reissue_safe = false;
  // With recovery on, its data lives in memory that outlives the process
  // (BackendEnv::memory), so a recovered device finds it again.
  bool keeps_memory = false;
  // It can serve from the request's own pages: its spec may ask for zero
  // copy ("zero_copy": true).
  bool zero_copy = false;
};

// A row of the table. Rows are written positionally, in this order.
struct BackendType {
  std::string_view name;
  // The keys its "backend" object may hold, "type" included; any other is
  // rejected before read() runs.
  std::span<const std::string_view> keys;
  std::span<const BackendFlag> flags;
  BackendCaps caps;
  // Reads and checks the keys into `out` (type already set), recording a
  // problem that names the field and the value for each mistake.
  // `block_size` is nullopt when the spec's own logical_block_size was
  // invalid, to avoid a second, derived complaint.
  void (*read)(config::FieldReader& reader, const nlohmann::json& backend,
               std::optional<uint32_t> block_size, BackendSpec& out);
  // Writes the keys so that read() gives the same BackendSpec back.
  void (*write)(const BackendSpec& spec, nlohmann::json& out);
  // What the device object of `list` and `info` shows besides "type".
  void (*view)(const BackendSpec& spec, nlohmann::json& out);
  Result<std::unique_ptr<Backend>> (*open)(const DeviceSpec& spec, const BackendEnv& env);
};

// Every backend type, in the order messages and help list them.
std::span<const BackendType* const> backend_types();
// The type of that name, or nullptr.
const BackendType* find_backend_type(std::string_view name);
// "mem, file, null" (`separator` ", "), "mem|file|null" (`separator` "|"),
// "mem, file or null" (`last` " or ").
std::string backend_type_names(std::string_view separator, std::string_view last = {});

// A backend for the spec, or why not.
Result<std::unique_ptr<Backend>> make_backend(const DeviceSpec& spec, const BackendEnv& env);
// The same, with `memory` as BackendEnv::memory.
Result<std::unique_ptr<Backend>> make_backend(const DeviceSpec& spec, KeptMemory* memory = nullptr,
                                              bool reopen = false);
// Whether the device's memory is kept across restarts (BackendCaps).
bool keeps_memory(const DeviceSpec& spec);
// The device's type's capabilities; none for a type that does not exist.
BackendCaps backend_caps(const BackendSpec& backend);

// For the rows: "size", a multiple of the logical block size, required or
// not, at most `max` bytes (the largest device the type can serve).
void read_size_key(config::FieldReader& reader, const nlohmann::json& backend,
                   std::optional<uint32_t> block_size, bool required, uint64_t max,
                   BackendSpec& out);
// A backend type whose only key is "size".
void write_size_key(const BackendSpec& spec, nlohmann::json& out);
void view_nothing(const BackendSpec& spec, nlohmann::json& out);
// --size, for every type that has a size.
inline constexpr BackendFlag kSizeFlag = {
    "size", "size", BackendFlag::Sets::kValue, "--size SIZE",
    "bytes, or with a unit: 256MiB, 1GiB (B, KiB, MiB, GiB, TiB)"};

// --create, for every type that can make its storage.
inline constexpr BackendFlag kCreateFlag = {
    "create", "create", BackendFlag::Sets::kTrue, "--create",
    "file, rbd: create the backing file or image if it does\nnot exist (at --size)"};

// The keys and ublkctl options of a type whose only key is its size.
inline constexpr std::string_view kSizeOnlyKeys[] = {"type", "size"};
inline constexpr BackendFlag kSizeOnlyFlags[] = {kSizeFlag};

// What a row's open() returns for a backend it made, or the error.
template <typename T>
Result<std::unique_ptr<Backend>> as_backend(Result<std::unique_ptr<T>> made) {
  if (!made) return made.error();
  return std::unique_ptr<Backend>(std::move(made).value());
}

}  // namespace ublkd
