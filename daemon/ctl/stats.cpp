// ublkctl stats: the daemon's counters (admin op `stats`) as a table, as
// rates between two samples (--watch), or in Prometheus's text format.
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <map>

#include "base/size.h"
#include "ctl/commands.h"
#include "ctl/internal.h"
#include "queue/queue_stats.h"

namespace ublkd::ctl {

using nlohmann::json;

namespace {

// One device's "total" object, checked and read.
struct Counters {
  struct Op {
    uint64_t ops = 0, bytes = 0, errors = 0;
  };
  std::array<Op, kStatOps> op{};
  uint64_t in_flight = 0;
  // Per bucket: its upper bound in µs (nullopt: none) and its count.
  std::vector<std::pair<std::optional<uint64_t>, uint64_t>> buckets;
  uint64_t latency_sum_us = 0;
  uint64_t latency_count = 0;
};

struct DeviceCounters {
  std::string name;
  std::string state;
  Counters total;
};

Result<Counters> counters_of(const json& c) {
  auto field = [&](const json& object, const char* key) -> Result<uint64_t> {
    if (auto v = as_u64(member(object, key))) return *v;
    return shape_error("stats", std::string("no count \"") + key + "\"");
  };
  Counters out;
  for (size_t i = 0; i < kStatOps; ++i) {
    const json& o = member(c, kStatOpNames[i]);
    auto ops = field(o, "ops");
    auto bytes = field(o, "bytes");
    auto errors = field(o, "errors");
    if (!ops || !bytes || !errors) return shape_error("stats", "an operation lacks its counts");
    out.op[i] = {*ops, *bytes, *errors};
  }
  auto in_flight = field(c, "in_flight");
  if (!in_flight) return in_flight.error();
  out.in_flight = *in_flight;
  const json& latency = member(c, "latency_us");
  auto sum = field(latency, "sum");
  auto count = field(latency, "count");
  if (!sum || !count) return shape_error("stats", "latency_us lacks its sum or count");
  out.latency_sum_us = *sum;
  out.latency_count = *count;
  const json& buckets = member(latency, "buckets");
  if (!buckets.is_array()) return shape_error("stats", "latency_us has no buckets");
  for (const json& b : buckets) {
    auto n = field(b, "count");
    if (!n) return n.error();
    out.buckets.emplace_back(as_u64(member(b, "below_us")), *n);
  }
  return out;
}

Result<std::vector<DeviceCounters>> devices_of(const json& result) {
  const json& devices = member(result, "devices");
  if (!devices.is_array()) return shape_error("stats", "no \"devices\" array");
  std::vector<DeviceCounters> out;
  for (const json& d : devices) {
    const json& name = member(d, "name");
    const json& state = member(d, "state");
    if (!name.is_string() || !state.is_string())
      return shape_error("stats", "a device lacks its name or state");
    auto total = counters_of(member(d, "total"));
    if (!total) return total.error();
    out.push_back({name.get<std::string>(), state.get<std::string>(), std::move(total).value()});
  }
  return out;
}

std::string latency_text(std::optional<uint64_t> below_us, uint64_t last_from_us) {
  char buf[32];
  if (!below_us) {
    std::snprintf(buf, sizeof(buf), ">=%.1fs", static_cast<double>(last_from_us) / 1e6);
  } else if (*below_us < 1000) {
    std::snprintf(buf, sizeof(buf), "<%" PRIu64 "us", *below_us);
  } else if (*below_us < 1'000'000) {
    std::snprintf(buf, sizeof(buf), "<%.1fms", static_cast<double>(*below_us) / 1e3);
  } else {
    std::snprintf(buf, sizeof(buf), "<%.1fs", static_cast<double>(*below_us) / 1e6);
  }
  return buf;
}

// The bucket the q-th quantile falls in, as its bound: "-" without data.
std::string quantile(const std::vector<std::pair<std::optional<uint64_t>, uint64_t>>& buckets,
                     double q) {
  uint64_t count = 0;
  for (const auto& [limit, n] : buckets) count += n;
  if (count == 0) return "-";
  const auto rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(count)));
  uint64_t seen = 0;
  uint64_t last_limit = 0;
  for (const auto& [limit, n] : buckets) {
    seen += n;
    if (seen >= rank && n > 0) return latency_text(limit, last_limit);
    if (limit) last_limit = *limit;
  }
  return latency_text(std::nullopt, last_limit);
}

// b - a, as 0 where b is behind (the device's queues started again).
uint64_t delta(uint64_t a, uint64_t b) {
  return b >= a ? b - a : b;
}

std::string rate_text(uint64_t n, double seconds) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.0f", static_cast<double>(n) / seconds);
  return buf;
}

std::string byte_rate_text(uint64_t n, double seconds) {
  return format_size(static_cast<uint64_t>(std::llround(static_cast<double>(n) / seconds))) +
         "/s";
}

// Prometheus label values: backslash, quote and newline escaped.
std::string label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

Result<std::string> format_stats(const json& result) {
  auto devices = devices_of(result);
  if (!devices) return devices.error();
  std::vector<std::vector<std::string>> rows;
  for (const DeviceCounters& d : *devices) {
    const Counters& c = d.total;
    uint64_t errors = 0;
    for (const auto& o : c.op) errors += o.errors;
    rows.push_back({d.name, d.state, std::to_string(c.op[0].ops), std::to_string(c.op[1].ops),
                    std::to_string(c.op[2].ops), std::to_string(c.op[3].ops),
                    std::to_string(c.op[4].ops), format_size(c.op[0].bytes),
                    format_size(c.op[1].bytes), std::to_string(errors),
                    std::to_string(c.in_flight), quantile(c.buckets, 0.5),
                    quantile(c.buckets, 0.99)});
  }
  return render_table({"NAME", "STATE", "READS", "WRITES", "FLUSHES", "DISCARDS", "ZEROES", "READ",
                       "WRITTEN", "ERRORS", "IN_FLIGHT", "P50", "P99"},
                      {false, false, true, true, true, true, true, true, true, true, true, true,
                       true},
                      rows);
}

Result<std::string> format_stats_rates(const json& before, const json& after, double seconds) {
  auto was = devices_of(before);
  if (!was) return was.error();
  auto now = devices_of(after);
  if (!now) return now.error();
  if (!(seconds > 0)) return Error(EINVAL, "no time between the two samples");
  std::map<std::string, const Counters*> earlier;
  for (const DeviceCounters& d : *was) earlier[d.name] = &d.total;
  static const Counters kNone;
  std::vector<std::vector<std::string>> rows;
  for (const DeviceCounters& d : *now) {
    auto it = earlier.find(d.name);
    const Counters& a = it == earlier.end() ? kNone : *it->second;
    const Counters& b = d.total;
    uint64_t errors = 0;
    std::array<uint64_t, kStatOps> ops{};
    for (size_t i = 0; i < kStatOps; ++i) {
      ops[i] = delta(a.op[i].ops, b.op[i].ops);
      errors += delta(a.op[i].errors, b.op[i].errors);
    }
    auto buckets = b.buckets;
    for (size_t i = 0; i < buckets.size() && i < a.buckets.size(); ++i)
      buckets[i].second = delta(a.buckets[i].second, b.buckets[i].second);
    rows.push_back({d.name, rate_text(ops[0], seconds), rate_text(ops[1], seconds),
                    rate_text(ops[2], seconds), rate_text(ops[3], seconds),
                    rate_text(ops[4], seconds),
                    byte_rate_text(delta(a.op[0].bytes, b.op[0].bytes), seconds),
                    byte_rate_text(delta(a.op[1].bytes, b.op[1].bytes), seconds),
                    rate_text(errors, seconds), std::to_string(b.in_flight),
                    quantile(buckets, 0.5), quantile(buckets, 0.99)});
  }
  return render_table({"NAME", "READS/S", "WRITES/S", "FLUSHES/S", "DISCARDS/S", "ZEROES/S",
                       "READ", "WRITTEN", "ERRORS/S", "IN_FLIGHT", "P50", "P99"},
                      {false, true, true, true, true, true, true, true, true, true, true, true},
                      rows);
}

Result<std::string> format_prometheus(const json& result) {
  auto devices = devices_of(result);
  if (!devices) return devices.error();
  std::string out;
  auto family = [&](const char* name, const char* type, const char* help) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  };
  auto sample = [&](const std::string& name, const std::string& labels, const std::string& v) {
    out += name + "{" + labels + "} " + v + "\n";
  };
  auto per_op = [&](const char* name, const char* help, uint64_t Counters::Op::*field) {
    family(name, "counter", help);
    for (const DeviceCounters& d : *devices) {
      for (size_t i = 0; i < kStatOps; ++i) {
        sample(name, "device=\"" + label(d.name) + "\",op=\"" + kStatOpNames[i] + "\"",
               std::to_string(d.total.op[i].*field));
      }
    }
  };
  family("ublkd_device_live", "gauge", "1 while the device is live.");
  for (const DeviceCounters& d : *devices)
    sample("ublkd_device_live", "device=\"" + label(d.name) + "\"", d.state == "live" ? "1" : "0");
  per_op("ublkd_requests_total", "Requests the device answered, errors included, by operation.",
         &Counters::Op::ops);
  per_op("ublkd_bytes_total", "Bytes of the requests answered without error, by operation.",
         &Counters::Op::bytes);
  per_op("ublkd_errors_total", "Requests answered with an error, by operation.",
         &Counters::Op::errors);
  family("ublkd_requests_in_flight", "gauge", "Requests received and not answered yet.");
  for (const DeviceCounters& d : *devices) {
    sample("ublkd_requests_in_flight", "device=\"" + label(d.name) + "\"",
           std::to_string(d.total.in_flight));
  }
  family("ublkd_request_latency_seconds", "histogram",
         "From the request reaching its queue thread to its answer.");
  for (const DeviceCounters& d : *devices) {
    const std::string dev = "device=\"" + label(d.name) + "\"";
    uint64_t cumulative = 0;
    for (const auto& [limit, n] : d.total.buckets) {
      cumulative += n;
      char le[32] = "+Inf";
      if (limit) std::snprintf(le, sizeof(le), "%g", static_cast<double>(*limit) / 1e6);
      sample("ublkd_request_latency_seconds_bucket", dev + ",le=\"" + le + "\"",
             std::to_string(cumulative));
    }
    char sum[32];
    std::snprintf(sum, sizeof(sum), "%g", static_cast<double>(d.total.latency_sum_us) / 1e6);
    sample("ublkd_request_latency_seconds_sum", dev, sum);
    sample("ublkd_request_latency_seconds_count", dev, std::to_string(cumulative));
  }
  return out;
}

}  // namespace ublkd::ctl
