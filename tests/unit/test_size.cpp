#include <cerrno>
#include <chrono>
#include <cstdint>
#include <string>

#include <catch2/catch.hpp>

#include "base/size.h"

using ublkd::format_duration;
using ublkd::format_size;
using ublkd::parse_size;

TEST_CASE("parse_size accepts bytes and binary units", "[size]") {
  struct Case {
    const char* text;
    uint64_t bytes;
  };
  const Case cases[] = {
      {"0", 0},
      {"4096", 4096},
      {"007", 7},
      {"512B", 512},
      {"512 B", 512},
      {"1KiB", 1024},
      {"1 KiB", 1024},
      {"1K", 1024},
      {"256MiB", 256ull << 20},
      {"256 MiB", 256ull << 20},
      {"256M", 256ull << 20},
      {"3GiB", 3ull << 30},
      {"3G", 3ull << 30},
      {"2TiB", 2ull << 40},
      {"2 T", 2ull << 40},
      {"18446744073709551615", UINT64_MAX},
      {"18446744073709551615B", UINT64_MAX},
      {"16777215TiB", 16777215ull << 40},
  };
  for (const Case& c : cases) {
    INFO("text: \"" << c.text << "\"");
    auto r = parse_size(c.text);
    REQUIRE(r.ok());
    CHECK(r.value() == c.bytes);
  }
}

TEST_CASE("parse_size rejects malformed sizes and names the value", "[size]") {
  struct Case {
    const char* text;
    int code;
    const char* why;  // a fragment the message must contain
  };
  const Case cases[] = {
      {"", EINVAL, "empty"},
      {"-1", EINVAL, "negative"},
      {"-1MiB", EINVAL, "negative"},
      {"+1", EINVAL, "digit"},
      {" 1", EINVAL, "digit"},
      {"MiB", EINVAL, "digit"},
      {"1.5GiB", EINVAL, "whole number"},
      {"1,5GiB", EINVAL, "whole number"},
      {"0.5", EINVAL, "whole number"},
      {"18446744073709551616", ERANGE, "larger than"},
      {"99999999999999999999999", ERANGE, "larger than"},
      {"16777216TiB", ERANGE, "larger than"},
      {"17179869184G", ERANGE, "larger than"},
      {"4096 ", EINVAL, "unknown unit \"\""},
      {"1  MiB", EINVAL, "unknown unit \" MiB\""},
      {"1MiBx", EINVAL, "unknown unit \"MiBx\""},
      {"1mib", EINVAL, "unknown unit \"mib\""},
      {"1KB", EINVAL, "unknown unit \"KB\""},
      {"1MB", EINVAL, "unknown unit \"MB\""},
      {"1k", EINVAL, "unknown unit \"k\""},
      {"1PiB", EINVAL, "unknown unit \"PiB\""},
      {"0x10", EINVAL, "unknown unit \"x10\""},
      {"12abc", EINVAL, "unknown unit \"abc\""},
  };
  for (const Case& c : cases) {
    INFO("text: \"" << c.text << "\"");
    auto r = parse_size(c.text);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == c.code);
    CHECK_THAT(r.error().message(),
               Catch::Contains("\"" + std::string(c.text) + "\"") && Catch::Contains(c.why));
  }
}

TEST_CASE("format_size is exact when exact and one decimal otherwise", "[size]") {
  struct Case {
    uint64_t bytes;
    const char* text;
  };
  const Case cases[] = {
      {0, "0B"},
      {1, "1B"},
      {512, "512B"},
      {1023, "1023B"},
      {1024, "1KiB"},
      {1536, "1.5KiB"},
      {4096, "4KiB"},
      {256ull << 20, "256MiB"},
      {(3ull << 30) / 2, "1.5GiB"},
      {1ull << 30, "1GiB"},
      {(1ull << 30) + 1, "1.0GiB"},                   // inexact, so it says so
      {(10ull << 20) + (1ull << 20) / 4, "10.3MiB"},  // 10.25 rounds half up
      {(1ull << 20) - 1, "1.0MiB"},                   // 1023.999KiB rounds into the next unit
      {(1ull << 20) - 100, "1023.9KiB"},              // but not when it stays below it
      {2ull << 40, "2TiB"},
      {1ull << 50, "1PiB"},
      {1ull << 60, "1EiB"},
      {UINT64_MAX, "16.0EiB"},
  };
  for (const Case& c : cases) {
    INFO("bytes: " << c.bytes);
    CHECK(format_size(c.bytes) == c.text);
  }
}

TEST_CASE("format_size output parses back when it is exact", "[size]") {
  for (uint64_t bytes : {0ull, 512ull, 4096ull, 256ull << 20, 7ull << 30, 3ull << 40}) {
    auto r = parse_size(format_size(bytes));
    REQUIRE(r.ok());
    CHECK(r.value() == bytes);
  }
}

TEST_CASE("format_duration: whole seconds in s, the rest in ms", "[size]") {
  using namespace std::chrono_literals;
  CHECK(format_duration(10s) == "10 s");
  CHECK(format_duration(250ms) == "250 ms");
}
