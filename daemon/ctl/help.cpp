// ublkctl's help: the overview, each command's text, and the command
// table. The text of `add` lists the backend types and their options from
// the backend table.
#include <algorithm>
#include <array>
#include <string>
#include <vector>

#include "backends/backend_type.h"
#include "ctl/internal.h"

namespace ublkd::ctl {

namespace {

constexpr std::string_view kGlobalHelp =
    "Usage: ublkctl [--socket PATH] [--json] COMMAND [ARGS]\n"
    "Manage the block devices of a running ublkd.\n"
    "\n"
    "Commands:\n"
    "  add NAME --backend TYPE [OPTIONS]  create a device and wait until it is live\n"
    "  add --spec FILE [--persist]        create a device from a JSON device spec\n"
    "  list                               list the devices\n"
    "  info NAME                          show everything about one device\n"
    "  del NAME                           stop and delete a device\n"
    "  resize NAME SIZE [--force]         grow or shrink a live mem, file or null device\n"
    "  stats [NAME] [--watch SECS]        what each device has served: counts, latency\n"
    "  attach NAME                        bring up a drop-in and stay while it is live\n"
    "  features                           show the ublk features of the kernel\n"
    "  reload                             re-read the configuration directory\n"
    "  upgrade                            hand the devices over to the next ublkd\n"
    "  version                            show the versions of ublkctl and ublkd\n"
    "  help [COMMAND]                     show this help, or a command's\n"
    "\n"
    "Options (before or after the command):\n"
    "  --socket PATH   ublkd's admin socket (default: $UBLKD_SOCKET, else\n"
    "                  /run/ublkd/ublkd.sock)\n"
    "  --json          print the daemon's answer as JSON\n"
    "  -h, --help      show help; 'ublkctl COMMAND --help' for a command\n"
    "  -V, --version   show the version of ublkctl\n"
    "\n"
    "Exit status: 0 on success, 1 on any error (one line on standard error).\n";

constexpr std::string_view kListHelp =
    "Usage: ublkctl list\n"
    "List the devices, including those coming up, going away or failed.\n"
    "With --json, prints the array of device objects.\n";

constexpr std::string_view kInfoHelp =
    "Usage: ublkctl info NAME\n"
    "Show every field of a device, and the flags the kernel gave it.\n"
    "With --json, prints the device object.\n";

constexpr std::string_view kDelHelp =
    "Usage: ublkctl del [--if-exists] [--force] NAME\n"
    "Stop and delete a device. A drop-in it came from stays in devices.d;\n"
    "delete that file too to make the removal permanent.\n"
    "Prints nothing on success ({\"name\": NAME, \"state\": \"removed\"} with\n"
    "--json). A device in use (mounted, held by device mapper, open in a\n"
    "process, or a partition of it) is refused as busy, naming what uses it,\n"
    "and keeps running.\n"
    "\n"
    "  --if-exists   a device that does not exist is not an error\n"
    "  --force       delete it even in use: its I/O fails, and the kernel keeps\n"
    "                its id until the last user closes it (ublkctl says so, and\n"
    "                `list` shows the device as removed-pending until then)\n";

constexpr std::string_view kResizeHelp =
    "Usage: ublkctl resize [--force] NAME SIZE\n"
    "Grow or shrink a live device and its storage: a mem or null device, or a\n"
    "file device on a regular file, which grows or is cut with it. SIZE is\n"
    "bytes or a size with a unit (2GiB), a multiple of the logical block size.\n"
    "The kernel sees the new size at once (blockdev --getsize64, /sys/block);\n"
    "grow a file system on it afterwards (resize2fs). The device's drop-in, if\n"
    "it has one, is rewritten with the new size. Prints the new size.\n"
    "\n"
    "Needs a kernel with UBLK_F_UPDATE_SIZE (Linux 6.16 and later): elsewhere\n"
    "it fails and nothing changes. An rbd device follows its image's size\n"
    "(rbd resize), an nbd device its server's. A block device behind a file\n"
    "device keeps its own size.\n"
    "\n"
    "  --force   shrink even below data written to the device, which is then\n"
    "            dropped (without it, such a shrink fails and names the first\n"
    "            written byte beyond SIZE)\n";

constexpr std::string_view kStatsHelp =
    "Usage: ublkctl stats [NAME] [--watch SECS [--count N]] [--format text|prometheus]\n"
    "What each device (or NAME) has served since its queues started: requests\n"
    "per operation, bytes read and written, errors, requests in flight, and\n"
    "the median and 99th percentile latency (as the bound of their log2\n"
    "bucket), counted by the queue threads from a request's arrival to its\n"
    "answer. With --json, the daemon's counters per device and per queue,\n"
    "with the whole latency histogram.\n"
    "\n"
    "  --watch SECS         every SECS seconds, the rates over the last SECS\n"
    "  --count N            with --watch: N reports, then exit\n"
    "  --format prometheus  Prometheus's text exposition format (for\n"
    "                       node_exporter's textfile collector)\n";

constexpr std::string_view kAttachHelp =
    "Usage: ublkctl attach NAME\n"
    "Bring up the device of the drop-in devices.d/NAME.json (unless it is live\n"
    "already), print its block device, then stay until the device stops being\n"
    "live. Under systemd (NOTIFY_SOCKET set) it reports READY=1 once the device\n"
    "is live; this is what ublkd@NAME.service runs.\n"
    "\n"
    "Exit status: 0 when the device was deleted (ublkctl del, or ublkd\n"
    "stopping), 1 when it failed, could not come up, or ublkd went away.\n";

constexpr std::string_view kFeaturesHelp =
    "Usage: ublkctl features\n"
    "Show the ublk feature bits of the running kernel, by name where ublkd\n"
    "knows them.\n";

constexpr std::string_view kReloadHelp =
    "Usage: ublkctl reload\n"
    "Re-read ublkd.json and devices.d, as SIGHUP does: new drop-ins with\n"
    "autostart are brought up; running devices are left alone and reported\n"
    "if their drop-in changed or disappeared.\n";

constexpr std::string_view kUpgradeHelp =
    "Usage: ublkctl upgrade\n"
    "Make ublkd exit without removing its devices, for a new ublkd binary to\n"
    "take them over: each device stays, quiesced (its I/O waits), until the\n"
    "next ublkd recovers it. Where the kernel offers UBLK_F_QUIESCE, ublkd\n"
    "first answers the requests it holds (within 5 s), so none is served\n"
    "twice. Under systemd, ublkd.service restarts at once\n"
    "(exit status 75); elsewhere, start ublkd again yourself. Refused while a\n"
    "device is starting or stopping, or if one has recovery off.\n";

constexpr std::string_view kVersionHelp =
    "Usage: ublkctl version\n"
    "Show the version of ublkctl, and the version and API level of ublkd.\n";

constexpr std::string_view kHelpHelp =
    "Usage: ublkctl help [COMMAND]\n"
    "Show the overview, or the help of one command.\n";

constexpr AddOption kDeviceAddOptions[] = {
    {"queues", true, "--queues N", "hardware queues"},
    {"depth", true, "--depth N", "tags per queue"},
    {"block-size", true, "--block-size N", "logical block size in bytes"},
    {"read-only", false, "--read-only", "refuse writes"},
    {"no-recovery", false, "--no-recovery",
     "let the device go with ublkd instead of keeping it\nquiesced for the next ublkd to recover"},
    {"no-partition-scan", false, "--no-partition-scan",
     "the kernel does not read the device's partition table\n(UBLK_F_NO_AUTO_PART_SCAN)"},
    {"spec", true, "--spec FILE",
     "the whole device spec as a JSON object, as in devices.d\n('-' reads standard input); "
     "replaces NAME and the options\nabove"},
    {"persist", false, "--persist",
     "also write the spec to devices.d, so that the device comes\nback when ublkd restarts"},
    // Not an option of its own row: the one that chooses the backend.
    {"backend", true, "", ""},
};

// "  --path FILE       the backing file ...\n", continuation lines indented
// to the column of the explanation.
std::string option_lines(std::string_view usage, std::string_view help) {
  constexpr size_t kUsageWidth = 18;
  std::string out = "  " + std::string(usage);
  out.append(kUsageWidth > usage.size() ? kUsageWidth - usage.size() : 1, ' ');
  for (size_t start = 0;;) {
    const size_t nl = help.find('\n', start);
    out += help.substr(start, nl == std::string_view::npos ? nl : nl - start);
    out += '\n';
    if (nl == std::string_view::npos) return out;
    out.append(2 + kUsageWidth, ' ');
    start = nl + 1;
  }
}

std::string make_add_help() {
  std::string out = "Usage: ublkctl add NAME --backend " + backend_type_names("|") +
                    " [OPTIONS]\n"
                    "       ublkctl add --spec FILE [--persist]\n"
                    "Create a device, wait until it is live and print its block device.\n"
                    "Options left out take the daemon's defaults.\n"
                    "\n";
  out +=
      option_lines("--backend TYPE", "where the data lives: " + backend_type_names(", ", " or "));
  std::vector<std::string_view> shown;
  for (const BackendType* type : backend_types()) {
    for (const BackendFlag& f : type->flags) {
      if (std::find(shown.begin(), shown.end(), f.name) != shown.end()) continue;
      shown.push_back(f.name);
      out += option_lines(f.usage, f.help);
    }
  }
  for (const AddOption& o : kDeviceAddOptions) {
    if (!o.usage.empty()) out += option_lines(o.usage, o.help);
  }
  out += "\nWith --json, prints the device object instead of the block device.\n";
  return out;
}

std::string_view add_help() {
  static const std::string text = make_add_help();
  return text;
}

}  // namespace

std::string_view global_help() {
  return kGlobalHelp;
}

std::span<const AddOption> device_add_options() {
  return kDeviceAddOptions;
}

const CommandInfo* find_command(std::string_view name) {
  static const std::array<CommandInfo, 12> kCommands = {{
      {"add", 0, 1, add_help()},
      {"list", 0, 0, kListHelp},
      {"info", 1, 1, kInfoHelp},
      {"del", 1, 1, kDelHelp},
      {"resize", 2, 2, kResizeHelp},
      {"stats", 0, 1, kStatsHelp},
      {"attach", 1, 1, kAttachHelp},
      {"features", 0, 0, kFeaturesHelp},
      {"reload", 0, 0, kReloadHelp},
      {"upgrade", 0, 0, kUpgradeHelp},
      {"version", 0, 0, kVersionHelp},
      {"help", 0, 1, kHelpHelp},
  }};
  for (const CommandInfo& c : kCommands) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

}  // namespace ublkd::ctl
