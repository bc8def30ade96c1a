// DIR/ublkd.json through check_daemon_config(): whatever the bytes, it
// returns a usable configuration (bad fields keep their defaults) and lists
// the problems, never crashes or throws.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "config/daemon_config.h"
#include "fuzz_check.h"

using namespace ublkd;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  constexpr std::string_view kOrigin = "/etc/ublkd/ublkd.json";
  std::vector<ConfigProblem> problems;
  const DaemonConfig c = check_daemon_config(text, kOrigin, problems);
  for (const ConfigProblem& p : problems) {
    FUZZ_CHECK(p.origin == kOrigin, "a problem names the file");
    FUZZ_CHECK(!p.message.empty(), "a problem says what is wrong");
  }
  // What the daemon goes on to use must be in range even after problems.
  FUZZ_CHECK(!c.socket.empty() && c.socket.front() == '/', "socket is absolute");
  FUZZ_CHECK(c.socket.size() <= kMaxSocketPathLength, "socket fits sun_path");
  FUZZ_CHECK(!c.admin_group.empty(), "admin group is set");
  FUZZ_CHECK(c.start_timeout.count() > 0 &&
                 c.start_timeout.count() <= int64_t{kMaxStartTimeoutSeconds} * 1000,
             "start_timeout in (0, 300 s]");
  FUZZ_CHECK(c.default_queues >= 1 && c.default_queues <= kMaxQueues, "default_queues in range");
  FUZZ_CHECK(c.default_queue_depth >= 1 && c.default_queue_depth <= kMaxQueueDepth,
             "default_queue_depth in range");
  FUZZ_CHECK(parse_log_level(to_string(c.log_level)) == c.log_level, "log level names round-trip");
  return 0;
}
