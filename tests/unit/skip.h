// Skips for unit tests. Catch2 2.13 has no skip of its own, and a test that
// returns early when its environment lacks something would count as passed
// without having checked anything. These record the skip instead: the
// runner (main.cpp) lists every skip with its reason at the end, and exits
// 77 when every test case it ran was skipped, which meson shows as SKIP.
// scripts/run-tests.sh compares the list with tests/expected-skips.
#pragma once

#include <string>
#include <vector>

namespace ublkd::test {

struct Skip {
  std::string test_case;
  std::string reason;
  bool whole;  // the whole test case; otherwise one part of it did not run
};

// The current test case did not run at all; the caller returns right after.
void record_skip(std::string reason);
// One part of the current test case did not run; the rest did.
void record_partial_skip(std::string reason);
const std::vector<Skip>& skips();

}  // namespace ublkd::test

// SKIP_TEST(reason): record the current test case as skipped and return.
#define SKIP_TEST(reason)                 \
  do {                                    \
    ::ublkd::test::record_skip((reason)); \
    return;                               \
  } while (0)
