#include "admin/protocol.h"

#include <algorithm>

#include "common/json_text.h"

namespace ublkd::admin {

using nlohmann::json;

namespace {

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    case json::value_t::number_float:
      return "a number";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer";
    default:
      return "a value";
  }
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
  json doc;
  try {
    doc = json::parse(line.begin(), line.end());
  } catch (const json::parse_error& e) {
    const json_text::Position at =
        json_text::position(line, json_text::error_offset(e.byte), json_text::Columns::kBytes);
    return RequestError{
        {code::kInvalidJson, "request is not valid JSON at " + json_text::describe(at)},
        std::nullopt};
  } catch (const json::exception& e) {
    // Valid syntax the library still refuses, e.g. a number too large for
    // a double (out_of_range 406).
    return RequestError{{code::kInvalidJson, std::string("request is not valid JSON: ") + e.what()},
                        std::nullopt};
  }
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
    if (!req.doc.contains(f))
      return AdminError{code::kInvalidRequest,
                        "op \"" + req.op + "\" needs the field \"" + std::string(f) + "\""};
  }
  return std::nullopt;
}

Result<std::string, AdminError> string_field(const Request& req, std::string_view field) {
  auto it = req.doc.find(field);
  if (it == req.doc.end())
    return AdminError{code::kInvalidRequest,
                      "op \"" + req.op + "\" needs the field \"" + std::string(field) + "\""};
  if (!it->is_string())
    return AdminError{code::kInvalidRequest,
                      "\"" + std::string(field) + "\" must be a string, not " + type_name(*it)};
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
