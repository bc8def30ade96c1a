#include <catch2/catch.hpp>

#include "uring/ring.h"

using namespace ublkd;

TEST_CASE("setup_flags_string names flags and shows the unknown rest in hex") {
  CHECK(setup_flags_string(0) == "none");
  CHECK(setup_flags_string(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN) ==
        "single-issuer,defer-taskrun");
  CHECK(setup_flags_string(IORING_SETUP_COOP_TASKRUN | (1u << 30)) == "coop-taskrun,0x40000000");
}

TEST_CASE("create_probed drops the optional flags the kernel refuses, newest first") {
  SECTION("a flag no kernel knows is dropped, the known ones stay") {
    // Bit 30 is no IORING_SETUP_* flag: every kernel refuses it with EINVAL.
    auto ring = Ring::create_probed(8, 0, (1u << 30) | IORING_SETUP_COOP_TASKRUN);
    REQUIRE(ring);
    CHECK((ring->flags() & (1u << 30)) == 0);
    CHECK((ring->flags() & IORING_SETUP_COOP_TASKRUN) != 0);
  }
  SECTION("the queue rings' flags on this kernel") {
    // Every kernel ublk_drv runs on (6.0+) has these; a kernel without
    // DEFER_TASKRUN (6.0) still gets a ring, without it.
    const unsigned want =
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    auto ring = Ring::create_probed(8, 0, want);
    REQUIRE(ring);
    CHECK((ring->flags() & ~want) == 0);
    CHECK((ring->flags() & IORING_SETUP_COOP_TASKRUN) != 0);
  }
  SECTION("a required flag the kernel refuses fails the setup") {
    auto ring = Ring::create_probed(8, 1u << 30, IORING_SETUP_COOP_TASKRUN);
    REQUIRE_FALSE(ring);
    CHECK(ring.error().code() == EINVAL);
  }
}
