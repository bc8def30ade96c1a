// Bytes a client sends to the admin socket, taken apart as admin::Server
// and AdminHandler do before any device is touched: split into lines, each
// parsed into a request (or an error answer), the request's fields checked,
// an "add" request's spec checked, and every answer built and serialized.
// Anyone in the admin group can send these bytes, so nothing here may crash,
// hang or throw.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "admin/protocol.h"
#include "config/device_spec.h"
#include "fuzz_check.h"

namespace admin = ublkd::admin;
using nlohmann::json;

namespace {

// A response must stay one line of the line-framed protocol.
void check_line(const std::string& line) {
  FUZZ_CHECK(!line.empty() && line.back() == '\n', "response ends with a newline");
  FUZZ_CHECK(line.find('\n') == line.size() - 1, "response is a single line");
}

void answer_error(const std::optional<json>& id, const admin::AdminError& e) {
  check_line(admin::to_line(admin::error_response(id, e)));
}

// The checks AdminHandler::handle makes before it calls into the manager.
void handle(const admin::Request& req) {
  if (auto e = admin::check_fields(req, {})) answer_error(req.id, *e);
  if (auto e = admin::check_fields(req, {"name"}, {"name"})) answer_error(req.id, *e);
  if (auto e = admin::check_fields(req, {"spec", "persist"}, {"spec"})) answer_error(req.id, *e);
  if (auto e = admin::check_fields(req, {"name", "timeout_ms"}, {"name"})) answer_error(req.id, *e);

  auto name = admin::string_field(req, "name");
  if (auto* e = std::get_if<admin::AdminError>(&name)) answer_error(req.id, *e);

  if (auto it = req.doc.find("spec"); it != req.doc.end() && it->is_object()) {
    std::vector<ublkd::ConfigProblem> problems;
    const ublkd::SpecDefaults defaults{2, 128};
    auto spec = ublkd::check_device_spec(*it, "", defaults, problems);
    FUZZ_CHECK(spec.has_value() == problems.empty(), "a spec is returned exactly when valid");
    if (spec) {
      check_line(admin::to_line(admin::ok_response(req.id, ublkd::to_json(*spec))));
    } else {
      std::string msg;
      for (const auto& p : problems) msg += p.to_string() + "; ";
      answer_error(req.id, {admin::code::kInvalidSpec, msg});
    }
  }
  // The catch-all answer quotes the op back.
  answer_error(req.id, {admin::code::kUnknownOp, "unknown op \"" + req.op + "\""});
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  // Framing as in admin::Server::process_lines.
  while (!in.empty()) {
    const size_t nl = in.find('\n');
    std::string line(in.substr(0, nl));
    in.remove_prefix(nl == std::string_view::npos ? in.size() : nl + 1);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;

    auto parsed = admin::parse_request(line);
    if (auto* e = std::get_if<admin::RequestError>(&parsed)) {
      FUZZ_CHECK(!e->error.code.empty(), "an error has a code");
      answer_error(e->id, e->error);
      continue;
    }
    const auto& req = std::get<admin::Request>(parsed);
    FUZZ_CHECK(req.doc.is_object(), "a request is an object");
    FUZZ_CHECK(req.doc.at("op").is_string(), "a request's op is a string");
    handle(req);
  }
  return 0;
}
