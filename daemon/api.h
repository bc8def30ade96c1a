// The admin API (docs/admin-api.md) on the daemon's side: the handler that
// turns each request into a Manager call, the JSON views of what the
// manager reports, and the names of the kernel's feature bits.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "admin/protocol.h"
#include "admin/server.h"
#include "config/device_spec.h"
#include "manager.h"
#include "op_error.h"

namespace ublkd {

// Told when a reload starts and when it has ended (systemd hears of both).
struct ReloadHooks {
  std::function<void()> begin;
  std::function<void()> end;
  // The devices were handed over (`upgrade`, already answered): exit.
  std::function<void()> handed_over;
};

// Answers admin requests, now or later, through the reply it is given.
class AdminHandler {
 public:
  AdminHandler(Manager& manager, std::filesystem::path config_dir, SpecDefaults defaults,
               ReloadHooks hooks = {})
      : manager_(manager),
        config_dir_(std::move(config_dir)),
        defaults_(defaults),
        hooks_(std::move(hooks)) {}
  void handle(const admin::Request& req, const admin::Server::Reply& reply);

  // Re-reads the configuration directory and applies it, for the `reload`
  // op and SIGHUP alike: the hooks hear of its begin and end, the outcome is
  // logged, and `done` gets the report, or why the directory could not be
  // read.
  void reload(std::function<void(Result<ReloadReport>)> done);

 private:
  using Reply = admin::Server::Reply;
  struct Op;
  static const Op kOps[];

  void version(const admin::Request& req, const Reply& reply);
  void list(const admin::Request& req, const Reply& reply);
  void info(const admin::Request& req, const Reply& reply);
  void features(const admin::Request& req, const Reply& reply);
  void del(const admin::Request& req, const Reply& reply);
  void resize(const admin::Request& req, const Reply& reply);
  void stats(const admin::Request& req, const Reply& reply);
  void add(const admin::Request& req, const Reply& reply);
  void up(const admin::Request& req, const Reply& reply);
  void watch(const admin::Request& req, const Reply& reply);
  void upgrade(const admin::Request& req, const Reply& reply);
  void reload_op(const admin::Request& req, const Reply& reply);

  Manager& manager_;
  std::filesystem::path config_dir_;
  SpecDefaults defaults_;
  ReloadHooks hooks_;
};

// The device object of `list`, `info` and `add`.
nlohmann::json to_json(const DeviceSnapshot& d);
nlohmann::json to_json(const ReloadReport& r);
// The counters of `stats` (docs/admin-api.md): per operation, in flight,
// the latency histogram.
nlohmann::json to_json(const StatsSnapshot& s);
nlohmann::json to_json(const DeviceStats& d);
admin::AdminError to_admin_error(const OpError& e);

// The names of the feature bits set in `features` (uapi::kFeatureNames),
// "bitN" for bits ublkd does not know.
std::vector<std::string> feature_names(uint64_t features);
// "ZERO_COPY|USER_RECOVERY|...|bit40" for logs; "none" for 0.
std::string describe_features(uint64_t features);

}  // namespace ublkd
