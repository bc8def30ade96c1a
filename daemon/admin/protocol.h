// The admin protocol's framing and envelopes (docs/admin-api.md): parsing
// one request line into an op and its fields, and building the response
// objects. Pure functions, so every rule is unit-tested without a socket.
#pragma once

#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "common/wire.h"

namespace ublkd::admin {

struct AdminError {
  std::string code;
  std::string message;
};

struct Request {
  std::string op;
  nlohmann::json doc;                // the whole request object
  std::optional<nlohmann::json> id;  // echoed back when present
};

// Why a line is not a request. `id` is the line's "id" when the line was a
// JSON object that had one, so that this answer echoes it like any other.
struct RequestError {
  AdminError error;
  std::optional<nlohmann::json> id;
};

// Parses one line (without its newline). Checks only the envelope: a JSON
// object with a string "op"; the op's own fields are checked by its handler
// with check_fields().
Result<Request, RequestError> parse_request(std::string_view line);

// Every field of the request other than op and id must be in `allowed`;
// fields in `required` must be present. Returns the first violation.
std::optional<AdminError> check_fields(const Request& req,
                                       std::initializer_list<std::string_view> allowed,
                                       std::initializer_list<std::string_view> required = {});

// A field's value of the expected JSON type, or the error naming it.
Result<std::string, AdminError> string_field(const Request& req, std::string_view field);

nlohmann::json ok_response(const std::optional<nlohmann::json>& id, nlohmann::json result);
nlohmann::json error_response(const std::optional<nlohmann::json>& id, const AdminError& e);

// The response as one line, newline included. Invalid UTF-8 from a client
// (echoed in a message) is replaced rather than failing the response.
std::string to_line(const nlohmann::json& response);

}  // namespace ublkd::admin
