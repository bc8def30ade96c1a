#include "admin/protocol.h"

#include <algorithm>

#include "common/json_text.h"

namespace ublkd::admin {

using nlohmann::json;

namespace {

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a number";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    default: return "a value";
  }
}

// The messages below are built by appending: GCC 12 at -O3 takes
// `"literal" + std::string(...)` for an overlapping copy (a false
// -Wrestrict).
AdminError missing_field(const Request& req, std::string_view field) {
  std::string m = "op \"";
  m += req.op;
  m += "\" needs the field \"";
  m += field;
  m += '"';
  return {code::kInvalidRequest, std::move(m)};
}

AdminError not_a_string(std::string_view field, const json& value) {
  std::string m = "\"";
  m += field;
  m += "\" must be a string, not ";
  m += type_name(value);
  return {code::kInvalidRequest, std::move(m)};
}

}  // namespace

Result<Request, RequestError> parse_request(std::string_view line) {
  if (line.size() >= kMaxRequestLine)
    return RequestError{{code::kRequestTooLarge, "request line exceeds 1 MiB"}, std::nullopt};
  if (json_text::nesting_depth(line) > json_text::kMaxDepth) {
    return RequestError{{code::kInvalidJson, "request nests deeper than " +
                                                 std::to_string(json_text::kMaxDepth) + " levels"},
                        std::nullopt};
  }
  auto parsed = json_text::parse(line, json_text::Columns::kBytes);
  if (!parsed) {
    const json_text::ParseFailure& f = parsed.error();
    // A syntax error is told by its place; what else the library refuses
    // (a number too large for a double) by its message.
    return RequestError{
        {code::kInvalidJson, f.at ? "request is not valid JSON at " + json_text::describe(*f.at)
                                  : "request is not valid JSON: " + f.reason},
        std::nullopt};
  }
  json doc = std::move(parsed).value();
  if (!doc.is_object())
    return RequestError{{code::kInvalidRequest,
                         std::string("request must be a JSON object, not ") + type_name(doc)},
                        std::nullopt};
  Request req;
  if (auto it = doc.find("id"); it != doc.end()) req.id = *it;
  auto op = doc.find("op");
  if (op == doc.end())
    return RequestError{{code::kInvalidRequest, "request has no \"op\" field"}, req.id};
  if (!op->is_string())
    return RequestError{
        {code::kInvalidRequest, std::string("\"op\" must be a string, not ") + type_name(*op)},
        req.id};
  req.op = op->get<std::string>();
  req.doc = std::move(doc);
  return req;
}

std::optional<AdminError> check_fields(const Request& req,
                                       std::initializer_list<std::string_view> allowed,
                                       std::initializer_list<std::string_view> required) {
  for (const auto& [key, value] : req.doc.items()) {
    if (key == "op" || key == "id") continue;
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end())
      return AdminError{code::kInvalidRequest,
                        "unknown field \"" + key + "\" for op \"" + req.op + "\""};
  }
  for (std::string_view f : required) {
    if (!req.doc.contains(f)) return missing_field(req, f);
  }
  return std::nullopt;
}

Result<std::string, AdminError> string_field(const Request& req, std::string_view field) {
  auto it = req.doc.find(field);
  if (it == req.doc.end()) return missing_field(req, field);
  if (!it->is_string()) return not_a_string(field, *it);
  return it->get<std::string>();
}

json ok_response(const std::optional<json>& id, json result) {
  json r = {{"ok", true}};
  if (id) r["id"] = *id;
  r["result"] = std::move(result);
  return r;
}

json error_response(const std::optional<json>& id, const AdminError& e) {
  json r = {{"ok", false}};
  if (id) r["id"] = *id;
  r["error"] = {{"code", e.code}, {"message", e.message}};
  return r;
}

std::string to_line(const json& response) {
  std::string s = response.dump(-1, ' ', false, json::error_handler_t::replace);
  s += '\n';
  return s;
}

}  // namespace ublkd::admin
