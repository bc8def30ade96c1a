// How a piece of JSON text is described to the person who wrote it: where
// in the text a mistake is, what the parser's complaint was, how deep the
// text nests. Shared by every reader of JSON in ublkd and ublkctl (device
// specs, ublkd.json, admin requests, spec files given to ublkctl).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/error.h"

namespace ublkd::json_text {

// No document ublkd reads needs more than a few levels; copying and dumping
// a parsed value recurse once per level, so a deeper one is refused before
// it is parsed rather than allowed to exhaust the stack.
inline constexpr size_t kMaxDepth = 64;

// The deepest nesting of arrays and objects in `text`, counting brackets
// outside strings; stops counting once past `limit`. Meant for text that is
// about to be parsed: it does not check the syntax.
size_t nesting_depth(std::string_view text, size_t limit = kMaxDepth);

// How columns are counted: in characters (UTF-8), as an editor shows them,
// or in bytes, as the admin protocol has always reported them.
enum class Columns { kCharacters, kBytes };

struct Position {
  size_t line;    // 1-based
  size_t column;  // 1-based
};

// The line and column of byte `offset` of `text` (clamped to its end).
Position position(std::string_view text, size_t offset, Columns columns);

// "line L, column C".
std::string describe(Position p);

// nlohmann says "[json.exception.parse_error.101] parse error at line 1,
// column 9: syntax error while parsing object - unexpected '}'; expected
// string literal". The position is reported separately, so keep only the
// reason ("unexpected '}'; expected string literal").
std::string parse_error_reason(std::string_view what);

// Why a text is not JSON: where (for a syntax error; nullopt for valid
// syntax the library still refuses, such as a number too large for a
// double) and the reason, without the position.
struct ParseFailure {
  std::optional<Position> at;
  std::string reason;
};

// Parses `text` as one JSON document.
Result<nlohmann::json, ParseFailure> parse(std::string_view text, Columns columns);

}  // namespace ublkd::json_text
