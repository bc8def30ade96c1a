// Byte sizes (and timeouts) as people write them in configuration files and
// read them in tables and messages. Binary units only: a block device's size is always a multiple of
// its block size, and decimal units would silently produce sizes that are not.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "base/error.h"

namespace ublkd {

// Parses "4096", "256MiB" or "256 MiB" into bytes. Accepted units, matched
// case-sensitively: B, KiB, MiB, GiB, TiB and the short forms K, M, G, T,
// which mean the same binary units. At most one space may separate the number
// from the unit. Zero is a valid size here; whether it is a useful one is the
// caller's decision. Errors name the rejected text and use EINVAL, or ERANGE
// when the value does not fit in 64 bits.
Result<uint64_t> parse_size(std::string_view text);

// "512B", "256MiB", "1.5GiB": the largest binary unit that keeps the number
// at least 1, exact when the size is a whole multiple of that unit and
// otherwise rounded to one decimal.
std::string format_size(uint64_t bytes);

// "10 s", "250 ms": a timeout as messages show it.
std::string format_duration(std::chrono::milliseconds d);

}  // namespace ublkd
