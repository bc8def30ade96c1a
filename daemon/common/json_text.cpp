#include "common/json_text.h"

#include <algorithm>

namespace ublkd::json_text {

size_t nesting_depth(std::string_view text, size_t limit) {
  size_t depth = 0;
  size_t deepest = 0;
  bool in_string = false;
  bool escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

Position position(std::string_view text, size_t offset, Columns columns) {
  offset = std::min(offset, text.size());
  Position p{1, 1};
  for (size_t i = 0; i < offset; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      ++p.line;
      p.column = 1;
    } else if (columns == Columns::kBytes || (c & 0xC0) != 0x80) {
      ++p.column;  // a UTF-8 continuation byte is part of the character before
    }
  }
  return p;
}

std::string describe(Position p) {
  return "line " + std::to_string(p.line) + ", column " + std::to_string(p.column);
}

std::string parse_error_reason(std::string_view what) {
  if (size_t at = what.find("parse error"); at != std::string_view::npos) {
    what.remove_prefix(at);
    if (size_t colon = what.find(": "); colon != std::string_view::npos) {
      what.remove_prefix(colon + 2);
    }
  }
  // "syntax error while parsing object - " says nothing the rest does not.
  constexpr std::string_view kNoise = "syntax error while parsing ";
  if (what.substr(0, kNoise.size()) == kNoise) {
    if (size_t dash = what.find(" - "); dash != std::string_view::npos) {
      what.remove_prefix(dash + 3);
    }
  }
  return std::string(what);
}

Result<nlohmann::json, ParseFailure> parse(std::string_view text, Columns columns) {
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    // e.byte is the 1-based position of the last character read, where the
    // parser noticed the mistake.
    const size_t offset = e.byte > 0 ? e.byte - 1 : 0;
    return ParseFailure{position(text, offset, columns), parse_error_reason(e.what())};
  } catch (const nlohmann::json::exception& e) {
    return ParseFailure{std::nullopt, e.what()};
  }
}

}  // namespace ublkd::json_text
