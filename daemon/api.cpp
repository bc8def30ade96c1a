#include "api.h"

#include <cstdio>
#include <variant>

#include <spdlog/spdlog.h>

#include "backends/backend_type.h"
#include "base/size.h"
#include "config/config_dir.h"
#include "ublkd_version.h"

namespace ublkd {

using admin::AdminError;
using admin::Request;
using nlohmann::json;
namespace code = admin::code;

struct AdminHandler::Op {
  std::string_view name;
  void (AdminHandler::*run)(const Request& req, const Reply& reply);
};

// In the order the answer to an unknown op lists them.
const AdminHandler::Op AdminHandler::kOps[] = {
    {"add", &AdminHandler::add},
    {"del", &AdminHandler::del},
    {"resize", &AdminHandler::resize},
    {"list", &AdminHandler::list},
    {"info", &AdminHandler::info},
    {"stats", &AdminHandler::stats},
    {"up", &AdminHandler::up},
    {"watch", &AdminHandler::watch},
    {"features", &AdminHandler::features},
    {"reload", &AdminHandler::reload_op},
    {"upgrade", &AdminHandler::upgrade},
    {"version", &AdminHandler::version},
};

AdminError to_admin_error(const OpError& e) {
  switch (e.kind) {
    case Failure::kInvalidSpec: return {code::kInvalidSpec, e.message};
    case Failure::kExists: return {code::kExists, e.message};
    case Failure::kNotFound: return {code::kNotFound, e.message};
    case Failure::kBusy: return {code::kBusy, e.message};
    case Failure::kBackend: return {code::kBackendError, e.message};
    case Failure::kKernel: return {code::kKernelError, e.message};
    case Failure::kTimeout: return {code::kTimeout, e.message};
    case Failure::kIo: return {code::kIoError, e.message};
    case Failure::kShuttingDown: return {code::kShuttingDown, e.message};
    case Failure::kInvalidRequest: return {code::kInvalidRequest, e.message};
    case Failure::kUnsupported: return {code::kUnsupported, e.message};
    case Failure::kWouldLoseData: return {code::kWouldLoseData, e.message};
  }
  return {code::kInternal, e.message};
}

json to_json(const DeviceSnapshot& d) {
  json backend = {{"type", d.backend.type}};
  if (const BackendType* type = find_backend_type(d.backend.type)) type->view(d.backend, backend);
  if (!d.backend_facts.empty()) {
    json negotiated = json::object();
    for (const BackendFact& f : d.backend_facts)
      std::visit([&](const auto& v) { negotiated[f.key] = v; }, f.value);
    backend["negotiated"] = std::move(negotiated);
  }
  json j = {
      {"name", d.name},
      {"id", d.id ? json(*d.id) : json(nullptr)},
      {"state", std::string(to_string(d.state))},
      {"backend", backend},
      {"size", d.size},
      {"block_device", d.block_device.empty() ? json(nullptr) : json(d.block_device)},
      {"stable_path", d.stable_path.empty() ? json(nullptr) : json(d.stable_path)},
      {"persistent", d.persistent},
      {"source", d.source.empty() ? json(nullptr) : json(d.source)},
  };
  write_shape(d, j);
  if (d.state == DeviceState::kFailed) j["error"] = d.error;
  return j;
}

json to_json(const ReloadReport& r) {
  json failed = json::array();
  for (const auto& [name, err] : r.failed) failed.push_back({{"name", name}, {"error", err}});
  json changed = json::array();
  for (const auto& name : r.changed)
    changed.push_back({{"name", name}, {"message", "spec changed; restart the device to apply"}});
  return {{"started", r.started},
          {"failed", failed},
          {"changed", changed},
          {"orphaned", r.orphaned},
          {"problems", r.problems}};
}

json to_json(const StatsSnapshot& s) {
  json j = json::object();
  for (size_t i = 0; i < kStatOps; ++i) {
    const StatsSnapshot::Op& o = s.op[i];
    j[kStatOpNames[i]] = {{"ops", o.ops}, {"bytes", o.bytes}, {"errors", o.errors}};
  }
  j["in_flight"] = s.in_flight();
  json buckets = json::array();
  uint64_t count = 0;
  for (size_t i = 0; i < kLatencyBuckets; ++i) {
    const uint64_t limit = latency_bucket_limit_us(i);
    buckets.push_back({{"below_us", limit == 0 ? json(nullptr) : json(limit)},
                       {"count", s.latency[i]}});
    count += s.latency[i];
  }
  j["latency_us"] = {{"count", count}, {"sum", s.latency_sum_us}, {"buckets", buckets}};
  return j;
}

json to_json(const DeviceStats& d) {
  StatsSnapshot total;
  json queues = json::array();
  for (const StatsSnapshot& q : d.queues) {
    total += q;
    queues.push_back(to_json(q));
  }
  return {{"name", d.name},
          {"id", d.id ? json(*d.id) : json(nullptr)},
          {"state", std::string(to_string(d.state))},
          {"total", to_json(total)},
          {"queues", queues}};
}

std::vector<std::string> feature_names(uint64_t features) {
  std::vector<std::string> names;
  for (unsigned bit = 0; bit < 64; ++bit) {
    if ((features & (1ull << bit)) == 0) continue;
    names.push_back(bit < std::size(uapi::kFeatureNames) ? std::string(uapi::kFeatureNames[bit])
                                                         : "bit" + std::to_string(bit));
  }
  return names;
}

std::string describe_features(uint64_t features) {
  std::string out;
  for (const std::string& name : feature_names(features)) {
    if (!out.empty()) out += '|';
    out += name;
  }
  return out.empty() ? "none" : out;
}

namespace {

json features_json(uint64_t value, bool ioctl) {
  json known = json::array();
  json unknown = json::array();
  for (unsigned bit = 0; bit < 64; ++bit) {
    if ((value & (1ull << bit)) == 0) continue;
    if (bit < std::size(uapi::kFeatureNames))
      known.push_back({{"bit", bit}, {"name", uapi::kFeatureNames[bit]}});
    else
      unknown.push_back(bit);
  }
  char hex[32];
  std::snprintf(hex, sizeof(hex), "0x%llx", static_cast<unsigned long long>(value));
  return {{"value", value},
          {"hex", hex},
          {"known", known},
          {"unknown_bits", unknown},
          {"ioctl_encoding", ioctl}};
}

void log_reload(const ReloadReport& r) {
  for (const auto& p : r.problems) spdlog::error("config: {}", p);
  spdlog::info("reload: {} started, {} failed, {} changed, {} orphaned, {} problems",
               r.started.size(), r.failed.size(), r.changed.size(), r.orphaned.size(),
               r.problems.size());
}

void reply_ok(const admin::Server::Reply& reply, const Request& req, json result) {
  reply(admin::ok_response(req.id, std::move(result)));
}

void reply_error(const admin::Server::Reply& reply, const Request& req, const AdminError& e) {
  reply(admin::error_response(req.id, e));
}

// The answer of an op that ends with a device (add, up): its object, or
// the failure.
std::function<void(OpResult<DeviceSnapshot>)> answer_device(const admin::Server::Reply& reply,
                                                            const std::optional<json>& id) {
  return [reply, id](OpResult<DeviceSnapshot> result) {
    if (!result) return reply(admin::error_response(id, to_admin_error(result.error())));
    reply(admin::ok_response(id, to_json(result.value())));
  };
}

}  // namespace

void AdminHandler::handle(const Request& req, const Reply& reply) {
  for (const Op& op : kOps) {
    if (op.name == req.op) return (this->*op.run)(req, reply);
  }
  std::string known;
  for (const Op& op : kOps) {
    if (!known.empty()) known += ", ";
    known += op.name;
  }
  reply_error(reply, req,
              {code::kUnknownOp, "unknown op \"" + req.op + "\" (known: " + known + ")"});
}

void AdminHandler::version(const Request& req, const Reply& reply) {
  if (auto e = admin::check_fields(req, {})) return reply_error(reply, req, *e);
  reply_ok(reply, req, {{"version", UBLKD_VERSION}, {"api", admin::kApiVersion}});
}

void AdminHandler::list(const Request& req, const Reply& reply) {
  if (auto e = admin::check_fields(req, {})) return reply_error(reply, req, *e);
  json devices = json::array();
  for (const auto& d : manager_.list()) devices.push_back(to_json(d));
  reply_ok(reply, req, {{"devices", devices}});
}

void AdminHandler::info(const Request& req, const Reply& reply) {
  if (auto e = admin::check_fields(req, {"name"}, {"name"})) return reply_error(reply, req, *e);
  auto name = admin::string_field(req, "name");
  if (!name) return reply_error(reply, req, name.error());
  auto d = manager_.info(*name);
  if (!d) return reply_error(reply, req, {code::kNotFound, "no device named " + *name});
  json j = to_json(*d);
  j["kernel_flags"] = d->kernel_flags;
  j["kernel_flag_names"] = feature_names(d->kernel_flags);
  reply_ok(reply, req, std::move(j));
}

void AdminHandler::stats(const Request& req, const Reply& reply) {
  if (auto e = admin::check_fields(req, {"name"})) return reply_error(reply, req, *e);
  std::optional<std::string> name;
  if (req.doc.contains("name")) {
    auto n = admin::string_field(req, "name");
    if (!n) return reply_error(reply, req, n.error());
    name = *n;
  }
  auto stats = manager_.stats(name);
  if (!stats) return reply_error(reply, req, to_admin_error(stats.error()));
  json devices = json::array();
  for (const DeviceStats& d : stats.value()) devices.push_back(to_json(d));
  reply_ok(reply, req, {{"devices", devices}});
}

void AdminHandler::features(const Request& req, const Reply& reply) {
  if (auto e = admin::check_fields(req, {})) return reply_error(reply, req, *e);
  reply_ok(reply, req, features_json(manager_.kernel_features(), manager_.ioctl_encoding()));
}

void AdminHandler::del(const Request& req, const Reply& reply) {
  if (auto e = admin::check_fields(req, {"name", "force"}, {"name"}))
    return reply_error(reply, req, *e);
  auto name = admin::string_field(req, "name");
  if (!name) return reply_error(reply, req, name.error());
  bool force = false;
  if (auto it = req.doc.find("force"); it != req.doc.end()) {
    if (!it->is_boolean())
      return reply_error(reply, req, {code::kInvalidRequest, "\"force\" must be a boolean"});
    force = it->get<bool>();
  }
  manager_.remove(*name, force, [reply, id = req.id, n = *name](OpResult<DeviceSnapshot> result) {
    if (!result) return reply(admin::error_response(id, to_admin_error(result.error())));
    const DeviceSnapshot& d = result.value();
    json r = {{"name", n}, {"state", std::string(to_string(d.state))}};
    if (d.state == DeviceState::kRemovedPending) r["id"] = *d.id;
    reply(admin::ok_response(id, std::move(r)));
  });
}

void AdminHandler::resize(const Request& req, const Reply& reply) {
  if (auto e = admin::check_fields(req, {"name", "size", "force"}, {"name", "size"}))
    return reply_error(reply, req, *e);
  auto name = admin::string_field(req, "name");
  if (!name) return reply_error(reply, req, name.error());
  // As a spec's "size": bytes, or a string with a unit.
  const json& size = req.doc["size"];
  std::optional<uint64_t> bytes;
  if (size.is_number_unsigned()) {
    bytes = size.get<uint64_t>();
  } else if (size.is_string()) {
    if (auto parsed = parse_size(size.get<std::string>())) bytes = *parsed;
  }
  if (!bytes) {
    return reply_error(reply, req,
                       {code::kInvalidRequest, "\"size\" must be a number of bytes or a size such "
                                               "as \"2GiB\", not " + size.dump()});
  }
  bool force = false;
  if (auto it = req.doc.find("force"); it != req.doc.end()) {
    if (!it->is_boolean())
      return reply_error(reply, req, {code::kInvalidRequest, "\"force\" must be a boolean"});
    force = it->get<bool>();
  }
  manager_.resize(*name, *bytes, force, answer_device(reply, req.id));
}

void AdminHandler::add(const Request& req, const Reply& reply) {
  if (auto e = admin::check_fields(req, {"spec", "persist"}, {"spec"}))
    return reply_error(reply, req, *e);
  const json& spec_doc = req.doc["spec"];
  if (!spec_doc.is_object())
    return reply_error(reply, req, {code::kInvalidRequest, "\"spec\" must be an object"});
  bool persist = false;
  if (auto it = req.doc.find("persist"); it != req.doc.end()) {
    if (!it->is_boolean())
      return reply_error(reply, req, {code::kInvalidRequest, "\"persist\" must be a boolean"});
    persist = it->get<bool>();
  }
  std::vector<ConfigProblem> problems;
  auto spec = check_device_spec(spec_doc, "", defaults_, problems);
  if (!spec) {
    // Each problem names its field as a path inside the request.
    std::string msg;
    for (const auto& p : problems) {
      if (!msg.empty()) msg += "; ";
      msg += (p.field.empty() ? "spec" : "spec." + p.field) + ": " + p.message;
    }
    return reply_error(reply, req, {code::kInvalidSpec, msg});
  }
  manager_.add(*spec, persist, answer_device(reply, req.id));
}

void AdminHandler::up(const Request& req, const Reply& reply) {
  if (auto e = admin::check_fields(req, {"name"}, {"name"})) return reply_error(reply, req, *e);
  auto name = admin::string_field(req, "name");
  if (!name) return reply_error(reply, req, name.error());
  const std::string& n = *name;
  auto loaded = load_config_dir(config_dir_);
  if (!loaded) return reply_error(reply, req, {code::kIoError, loaded.error().to_string()});
  for (const DeviceSpec& spec : loaded->devices) {
    if (spec.name == n) return manager_.up(spec, answer_device(reply, req.id));
  }
  // Not among the valid specs: the file may be there but wrong.
  const std::filesystem::path dir = config_dir_ / std::string(kDevicesDir);
  const std::string file = (dir / (n + ".json")).string();
  std::string msg;
  for (const ConfigProblem& p : loaded->problems) {
    if (p.origin != file) continue;
    if (!msg.empty()) msg += "; ";
    msg += p.to_string();
  }
  if (!msg.empty()) return reply_error(reply, req, {code::kInvalidSpec, msg});
  reply_error(reply, req,
              {code::kNotFound,
               "no drop-in describes a device named " + n + " (looked in " + dir.string() + ")"});
}

void AdminHandler::watch(const Request& req, const Reply& reply) {
  if (auto e = admin::check_fields(req, {"name", "timeout_ms"}, {"name"}))
    return reply_error(reply, req, *e);
  auto name = admin::string_field(req, "name");
  if (!name) return reply_error(reply, req, name.error());
  int64_t timeout_ms = 30'000;
  if (auto it = req.doc.find("timeout_ms"); it != req.doc.end()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > 600'000) {
      return reply_error(
          reply, req,
          {code::kInvalidRequest, "\"timeout_ms\" must be an integer from 0 to 600000"});
    }
    timeout_ms = it->get<int64_t>();
  }
  manager_.watch(*name, std::chrono::milliseconds(timeout_ms),
                 [reply, id = req.id, n = *name](std::optional<DeviceSnapshot> d) {
                   json r = {{"name", n},
                             {"state", d ? std::string(to_string(d->state)) : "absent"},
                             {"live", d && d->state == DeviceState::kLive}};
                   if (d && d->state == DeviceState::kFailed) r["error"] = d->error;
                   reply(admin::ok_response(id, std::move(r)));
                 });
}

void AdminHandler::upgrade(const Request& req, const Reply& reply) {
  if (auto e = admin::check_fields(req, {})) return reply_error(reply, req, *e);
  auto names = manager_.hand_over();
  if (!names) return reply_error(reply, req, to_admin_error(names.error()));
  reply_ok(reply, req, {{"handed_over", names.value()}});
  if (hooks_.handed_over) hooks_.handed_over();
}

void AdminHandler::reload_op(const Request& req, const Reply& reply) {
  if (auto e = admin::check_fields(req, {})) return reply_error(reply, req, *e);
  reload([reply, id = req.id](Result<ReloadReport> r) {
    if (!r) return reply(admin::error_response(id, {code::kIoError, r.error().to_string()}));
    reply(admin::ok_response(id, to_json(r.value())));
  });
}

void AdminHandler::reload(std::function<void(Result<ReloadReport>)> done) {
  if (hooks_.begin) hooks_.begin();
  auto loaded = load_config_dir(config_dir_);
  if (!loaded) {
    if (hooks_.end) hooks_.end();
    return done(loaded.error());
  }
  manager_.reload(*loaded, [end = hooks_.end, done = std::move(done)](ReloadReport r) {
    log_reload(r);
    if (end) end();
    done(std::move(r));
  });
}

}  // namespace ublkd
