#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdio>

#include "skip.h"

namespace ublkd::test {

namespace {

std::vector<Skip>& skip_list() {
  static std::vector<Skip> list;
  return list;
}

int& cases_run() {
  static int n = 0;
  return n;
}

void add(std::string reason, bool whole) {
  skip_list().push_back(
      Skip{Catch::getResultCapture().getCurrentTestName(), std::move(reason), whole});
}

struct CaseCounter : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testCaseStarting(const Catch::TestCaseInfo&) override { ++cases_run(); }
};

}  // namespace

void record_skip(std::string reason) {
  add(std::move(reason), true);
}
void record_partial_skip(std::string reason) {
  add(std::move(reason), false);
}
const std::vector<Skip>& skips() {
  return skip_list();
}

}  // namespace ublkd::test

using ublkd::test::CaseCounter;
CATCH_REGISTER_LISTENER(CaseCounter)

int main(int argc, char** argv) {
  const int failed = Catch::Session().run(argc, argv);
  using ublkd::test::skips;
  int whole = 0;
  for (const auto& s : skips()) whole += s.whole ? 1 : 0;
  if (!skips().empty()) {
    std::printf("%zu skip(s) (not counted as passed when whole):\n", skips().size());
    for (const auto& s : skips())
      std::printf("SKIP%s: %s: %s\n", s.whole ? "" : " (part)", s.test_case.c_str(),
                  s.reason.c_str());
  }
  if (failed != 0) return failed;
  // Only skips: nothing was checked, which is not a pass (meson's SKIP).
  if (whole > 0 && whole == ublkd::test::cases_run()) return 77;
  return 0;
}
