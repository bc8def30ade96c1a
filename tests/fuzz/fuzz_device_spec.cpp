// A drop-in DIR/devices.d/NAME.json (or ublkctl's --spec text) through
// check_device_spec(): whatever the bytes, it must answer with a spec or
// with problems, never crash or throw, and a spec it accepts must satisfy
// the documented limits and survive to_json() and back unchanged (ublkd
// persists added devices that way).
#include <bit>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "config/device_spec.h"
#include "fuzz_check.h"

using namespace ublkd;

namespace {

constexpr std::string_view kOrigin = "/etc/ublkd/devices.d/fuzz.json";

void check_limits(const DeviceSpec& s) {
  FUZZ_CHECK(is_valid_device_name(s.name), "name is valid");
  FUZZ_CHECK(s.queues >= 1 && s.queues <= kMaxQueues, "queues in range");
  FUZZ_CHECK(s.queue_depth >= 1 && s.queue_depth <= kMaxQueueDepth, "queue_depth in range");
  FUZZ_CHECK(std::has_single_bit(s.logical_block_size) &&
                 s.logical_block_size >= kMinLogicalBlockSize &&
                 s.logical_block_size <= kMaxLogicalBlockSize,
             "logical_block_size valid");
  const BackendSpec& b = s.backend;
  FUZZ_CHECK(b.size % s.logical_block_size == 0, "size is a multiple of the block size");
  if (b.type == "mem") {
    FUZZ_CHECK(b.size > 0 && b.size <= kMaxMemDeviceSize, "mem size in range");
  } else if (b.type == "null") {
    FUZZ_CHECK(b.size > 0 && b.size <= kMaxDeviceSize, "null size in range");
  } else {
    FUZZ_CHECK(b.type == "file", "backend type is known");
    FUZZ_CHECK(!b.path.empty() && b.path.front() == '/', "file path is absolute");
    FUZZ_CHECK(b.path.find('\0') == std::string::npos, "file path has no NUL");
    FUZZ_CHECK(b.size <= kMaxDeviceSize, "file size in range");
    FUZZ_CHECK(!b.create || b.size > 0, "create comes with a size");
  }
  FUZZ_CHECK(s.source == kOrigin, "source is the origin");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const SpecDefaults defaults{3, 256};
  std::vector<ConfigProblem> problems;
  std::optional<DeviceSpec> spec = check_device_spec(text, kOrigin, defaults, problems);
  FUZZ_CHECK(spec.has_value() == problems.empty(), "a spec is returned exactly when valid");
  for (const ConfigProblem& p : problems) {
    FUZZ_CHECK(p.origin == kOrigin, "a problem names the file");
    FUZZ_CHECK(!p.message.empty(), "a problem says what is wrong");
    (void)p.to_string();
  }
  if (!spec) return 0;
  check_limits(*spec);

  const nlohmann::json doc = to_json(*spec);
  std::vector<ConfigProblem> again;
  std::optional<DeviceSpec> reread = check_device_spec(doc, kOrigin, defaults, again);
  FUZZ_CHECK(reread && again.empty(), "to_json() of a valid spec is valid");
  FUZZ_CHECK(*reread == *spec, "to_json() and back gives the same spec");
  // The text form, as a persisted drop-in is read back at the next start.
  std::optional<DeviceSpec> from_text = check_device_spec(doc.dump(2), kOrigin, defaults, again);
  FUZZ_CHECK(from_text && *from_text == *spec, "the dumped spec reads back the same");
  return 0;
}
