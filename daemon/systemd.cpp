#include "systemd.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#include <algorithm>
#include <cstring>
#include <span>
#include <utility>

#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

namespace ublkd {

namespace {

// Enough to see which devices to look at; the rest is in `ublkctl list`.
constexpr size_t kMaxFailedNames = 5;

std::string count_of(size_t n, const char* what) {
  return std::to_string(n) + " " + what + (n == 1 ? "" : "s");
}

bool is_starting(DeviceState s) {
  switch (s) {
    case DeviceState::kNew:
    case DeviceState::kAdded:
    case DeviceState::kParamsSet:
    case DeviceState::kQueuesPrimed:
    case DeviceState::kStartPending:
    case DeviceState::kRecovering: return true;
    case DeviceState::kLive:
    case DeviceState::kStopping:
    case DeviceState::kRemovedPending:
    case DeviceState::kRemoved:
    case DeviceState::kFailed: return false;
  }
  return false;
}

// The names of the socket families and types a passed fd may have.
constexpr std::pair<int, const char*> kFamilies[] = {
    {AF_UNIX, "AF_UNIX"}, {AF_INET, "AF_INET"}, {AF_INET6, "AF_INET6"}, {AF_NETLINK, "AF_NETLINK"}};
constexpr std::pair<int, const char*> kTypes[] = {{SOCK_STREAM, "SOCK_STREAM"},
                                                  {SOCK_DGRAM, "SOCK_DGRAM"},
                                                  {SOCK_SEQPACKET, "SOCK_SEQPACKET"},
                                                  {SOCK_RAW, "SOCK_RAW"}};

// `value`'s name in `names`, else `what` and the number.
std::string name_of(int value, std::span<const std::pair<int, const char*>> names,
                    const char* what) {
  for (const auto& [v, name] : names) {
    if (v == value) return name;
  }
  return std::string(what) + " " + std::to_string(value);
}

std::string family_name(int family) {
  return name_of(family, kFamilies, "family");
}

std::string type_name(int type) {
  return name_of(type, kTypes, "type");
}

// "an AF_INET SOCK_STREAM socket", "an AF_UNIX SOCK_STREAM socket that is
// not listening", "not a socket", for the error that refuses it.
std::string describe_fd(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return std::string("not an open file (") + std::strerror(errno) + ")";
  if (!S_ISSOCK(st.st_mode)) return "not a socket";
  int family = -1;
  int type = -1;
  int listening = 0;
  socklen_t len = sizeof(int);
  (void)::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &len);
  len = sizeof(int);
  (void)::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len);
  len = sizeof(int);
  (void)::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len);
  std::string d = "an " + family_name(family) + " " + type_name(type) + " socket";
  // Only a stream or seqpacket socket can listen; a datagram one never does.
  if (!listening && (type == SOCK_STREAM || type == SOCK_SEQPACKET)) d += " that is not listening";
  return d;
}

constexpr const char* kWanted =
    "ublkd takes one listening AF_UNIX SOCK_STREAM socket (ListenStream=/path in ublkd.socket)";

}  // namespace

std::string status_text(const DeviceStates& devices, ServicePhase phase) {
  size_t live = 0;
  size_t starting = 0;
  size_t stopping = 0;
  std::vector<std::string> failed;
  for (const auto& [name, state] : devices) {
    if (is_starting(state)) ++starting;
    if (state == DeviceState::kLive) ++live;
    if (state == DeviceState::kStopping) ++stopping;
    if (state == DeviceState::kFailed) failed.push_back(name);
  }
  std::string out;
  auto part = [&out](const std::string& p) {
    if (!out.empty()) out += ", ";
    out += p;
  };
  if (live > 0 || (starting == 0 && stopping == 0)) part(count_of(live, "device") + " live");
  if (starting > 0) part("starting " + count_of(starting, "device"));
  if (stopping > 0) part("stopping " + count_of(stopping, "device"));
  if (!failed.empty()) {
    std::string names;
    for (size_t i = 0; i < failed.size() && i < kMaxFailedNames; ++i)
      names += (i == 0 ? "" : ", ") + failed[i];
    if (failed.size() > kMaxFailedNames) names += ", ...";
    part(std::to_string(failed.size()) + " failed (" + names + ")");
  }
  switch (phase) {
    case ServicePhase::kRunning: return out;
    case ServicePhase::kReloading: return "reloading: " + out;
    case ServicePhase::kStopping: return "shutting down: " + out;
  }
  return out;
}

ServiceNotifier::ServiceNotifier(Send send) : send_(std::move(send)) {
  if (send_) return;
  send_ = [warned = false](const std::string& message) mutable {
    const int r = sd_notify(0, message.c_str());
    // Once is enough: the socket will not come back.
    if (r < 0 && !warned) {
      warned = true;
      spdlog::warn("sd_notify: {}", std::strerror(-r));
    }
  };
}

ServicePhase ServiceNotifier::phase() const {
  if (stopping_) return ServicePhase::kStopping;
  if (reloads_ > 0) return ServicePhase::kReloading;
  return ServicePhase::kRunning;
}

void ServiceNotifier::send(std::string fields) {
  std::string status = status_text(devices_, phase());
  if (fields.empty() && status == status_) return;
  status_ = std::move(status);
  send_(fields + "STATUS=" + status_);
}

void ServiceNotifier::devices_changed(DeviceStates devices) {
  devices_ = std::move(devices);
  send({});
}

void ServiceNotifier::ready() {
  if (stopping_ || ready_) return;
  ready_ = true;
  send("READY=1\n");
}

void ServiceNotifier::reload_begin() {
  ++reloads_;
  if (stopping_ || reloads_ > 1 || !ready_) return send({});
  reloading_sent_ = true;
  // Type=notify-reload (systemd 253) insists on the timestamp; Type=notify
  // ignores it.
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  const uint64_t usec =
      static_cast<uint64_t>(ts.tv_sec) * 1'000'000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
  send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec) + "\n");
}

void ServiceNotifier::reload_end() {
  if (reloads_ == 0) return;
  --reloads_;
  if (reloads_ > 0 || stopping_) return send({});
  if (!std::exchange(reloading_sent_, false)) return send({});
  send("READY=1\n");
}

void ServiceNotifier::stopping() {
  if (stopping_) return;
  stopping_ = true;
  send("STOPPING=1\n");
}

void ServiceNotifier::watchdog() { send_("WATCHDOG=1"); }

Result<std::optional<int>> check_listen_fds(int count, int first_fd) {
  if (count < 0) {
    return Error(-count, std::string("cannot take the sockets systemd passed (LISTEN_FDS, "
                                     "LISTEN_PID): ") +
                             std::strerror(-count));
  }
  if (count == 0) return std::optional<int>();
  if (count > 1) {
    return Error(EINVAL, "systemd passed " + std::to_string(count) + " file descriptors (fds " +
                             std::to_string(first_fd) + "-" +
                             std::to_string(first_fd + count - 1) + "); " + kWanted);
  }
  const int r = sd_is_socket_unix(first_fd, SOCK_STREAM, 1, nullptr, 0);
  if (r > 0) return std::optional<int>(first_fd);
  return Error(r < 0 ? -r : EINVAL, "systemd passed fd " + std::to_string(first_fd) + ", " +
                                        describe_fd(first_fd) + "; " + kWanted);
}

Result<SystemdFds> split_systemd_fds(int count, int first_fd,
                                     const std::vector<std::string>& names) {
  if (count < 0) return check_listen_fds(count, first_fd).error();
  SystemdFds out;
  std::vector<int> sockets;
  for (int i = 0; i < count; ++i) {
    const int fd = first_fd + i;
    const std::string name = static_cast<size_t>(i) < names.size() ? names[i] : std::string();
    if (name.rfind(kStoredMemPrefix, 0) == 0 && name.size() > std::strlen(kStoredMemPrefix)) {
      out.stored.emplace(name, UniqueFd(fd));
    } else {
      sockets.push_back(fd);
    }
  }
  if (sockets.empty()) return out;
  if (sockets.size() > 1) {
    std::string list;
    for (int fd : sockets) list += (list.empty() ? "" : ", ") + std::to_string(fd);
    for (int fd : sockets) ::close(fd);
    return Error(EINVAL, "systemd passed " + std::to_string(sockets.size()) +
                             " file descriptors that are not stored memory (fds " + list + "); " +
                             kWanted);
  }
  auto one = check_listen_fds(1, sockets.front());
  if (!one) {
    ::close(sockets.front());
    return one.error();
  }
  out.socket = UniqueFd(sockets.front());
  return out;
}

Result<SystemdFds> fds_from_systemd() {
  char** names = nullptr;
  const int count = sd_listen_fds_with_names(1, &names);
  std::vector<std::string> v;
  if (count > 0 && names != nullptr) {
    for (int i = 0; i < count; ++i) v.emplace_back(names[i] != nullptr ? names[i] : "");
  }
  if (names != nullptr) {
    for (int i = 0; names[i] != nullptr; ++i) std::free(names[i]);
    std::free(names);
  }
  return split_systemd_fds(count, SD_LISTEN_FDS_START, v);
}

std::string unix_socket_path(int fd) {
  sockaddr_un addr{};
  socklen_t len = sizeof(addr);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return {};
  if (addr.sun_family != AF_UNIX || len <= offsetof(sockaddr_un, sun_path)) return {};
  // An abstract socket's name starts with a NUL and is not a path.
  if (addr.sun_path[0] == '\0') return {};
  return std::string(addr.sun_path, strnlen(addr.sun_path, sizeof(addr.sun_path)));
}

Result<std::optional<std::chrono::microseconds>> watchdog_period() {
  uint64_t usec = 0;
  const int r = sd_watchdog_enabled(0, &usec);
  if (r < 0) return Error(-r, "WATCHDOG_USEC / WATCHDOG_PID");
  if (r == 0 || usec == 0) return std::optional<std::chrono::microseconds>();
  return std::optional(std::chrono::microseconds(usec));
}

std::chrono::milliseconds watchdog_ping_interval(std::chrono::microseconds period) {
  return std::max(std::chrono::milliseconds(1),
                  std::chrono::duration_cast<std::chrono::milliseconds>(period / 2));
}

}  // namespace ublkd
