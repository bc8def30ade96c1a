#include "base/size.h"

#include <array>
#include <cerrno>
#include <limits>

namespace ublkd {

namespace {

struct Unit {
  std::string_view name;
  int shift;
};

// Both spellings appear in the wild; they are accepted as exact synonyms.
constexpr std::array<Unit, 9> kParseUnits = {{
    {"B", 0},
    {"KiB", 10},
    {"MiB", 20},
    {"GiB", 30},
    {"TiB", 40},
    {"K", 10},
    {"M", 20},
    {"G", 30},
    {"T", 40},
}};

// Formatting has to cover all of uint64_t, so it goes beyond what parse_size
// accepts.
constexpr std::array<std::string_view, 7> kFormatUnits = {"B",   "KiB", "MiB", "GiB",
                                                          "TiB", "PiB", "EiB"};

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

Error size_error(int code, std::string_view text, std::string_view why) {
  std::string m = "invalid size \"";
  m += text;
  m += "\": ";
  m += why;
  return Error(code, std::move(m));
}

}  // namespace

Result<uint64_t> parse_size(std::string_view text) {
  if (text.empty()) return size_error(EINVAL, text, "empty");
  if (text.front() == '-') return size_error(EINVAL, text, "must not be negative");
  if (!is_digit(text.front())) return size_error(EINVAL, text, "must start with a digit");

  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  uint64_t number = 0;
  size_t i = 0;
  for (; i < text.size() && is_digit(text[i]); ++i) {
    const uint64_t digit = static_cast<uint64_t>(text[i] - '0');
    if (number > (kMax - digit) / 10) {
      return size_error(ERANGE, text, "larger than 18446744073709551615 bytes");
    }
    number = number * 10 + digit;
  }

  std::string_view rest = text.substr(i);
  if (!rest.empty() && (rest.front() == '.' || rest.front() == ',')) {
    return size_error(EINVAL, text, "must be a whole number (use a smaller unit)");
  }
  if (rest.empty()) return number;

  // A single space is allowed between number and unit, but not a trailing
  // one: "4096 " is more likely a truncated value than a deliberate one.
  if (rest.front() == ' ') rest.remove_prefix(1);
  for (const Unit& unit : kParseUnits) {
    if (rest != unit.name) continue;
    if (number > (kMax >> unit.shift)) {
      return size_error(ERANGE, text, "larger than 18446744073709551615 bytes");
    }
    return number << unit.shift;
  }
  std::string why = "unknown unit \"";
  why += rest;
  why += "\" (expected B, KiB, MiB, GiB, TiB, K, M, G or T)";
  return size_error(EINVAL, text, why);
}

std::string format_size(uint64_t bytes) {
  size_t index = 0;
  while (index + 1 < kFormatUnits.size() && bytes >> (10 * (index + 1)) != 0) ++index;
  if (index == 0) return std::to_string(bytes) + "B";

  const int shift = static_cast<int>(10 * index);
  const uint64_t unit = uint64_t{1} << shift;
  uint64_t whole = bytes >> shift;
  const uint64_t remainder = bytes & (unit - 1);
  if (remainder == 0) return std::to_string(whole) + std::string(kFormatUnits[index]);

  // remainder < unit <= 2^60, so remainder * 10 cannot overflow.
  uint64_t tenth = (remainder * 10 + unit / 2) / unit;
  if (tenth == 10) {
    ++whole;
    tenth = 0;
  }
  // Rounding up may reach the next unit: 1023.96KiB reads better as 1.0MiB.
  if (whole == 1024 && index + 1 < kFormatUnits.size()) {
    whole = 1;
    ++index;
  }
  return std::to_string(whole) + "." + std::to_string(tenth) + std::string(kFormatUnits[index]);
}

std::string format_duration(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
  return std::to_string(d.count()) + " ms";
}

}  // namespace ublkd
