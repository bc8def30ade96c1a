#include <catch2/catch.hpp>

#include <chrono>

#include "queue/idle_poll.h"

using ublkd::IdlePoll;
using namespace std::chrono_literals;

TEST_CASE("idle poll: off when the longest spin is zero", "[idle]") {
  IdlePoll idle(0ns);
  CHECK(idle.budget() == 0ns);
  int calls = 0;
  CHECK_FALSE(idle.spin([&] { return ++calls > 0; }));
  CHECK(calls == 0);  // not even one look: spinning is off
}

TEST_CASE("idle poll: short gaps keep a budget of twice the average, at least max/16", "[idle]") {
  IdlePoll idle(200us);
  CHECK(idle.budget() == std::chrono::nanoseconds(200us) / 16);  // nothing seen yet
  for (int i = 0; i < 64; ++i) idle.record(40us);
  // The average converges on 40 µs from below (integer steps of a quarter).
  CHECK(idle.budget() >= 70us);
  CHECK(idle.budget() <= 80us);
  for (int i = 0; i < 64; ++i) idle.record(0ns);
  CHECK(idle.budget() == std::chrono::nanoseconds(200us) / 16);
}

TEST_CASE("idle poll: long gaps turn spinning off, short ones turn it back on", "[idle]") {
  IdlePoll idle(100us);
  for (int i = 0; i < 16; ++i) idle.record(10ms);
  CHECK(idle.budget() == 0ns);
  // A long sleep counts as at most 4 x max, so a few quick requests bring
  // spinning back instead of a long history of idleness holding it off.
  int quick = 0;
  while (idle.budget() == 0ns && quick < 16) {
    idle.record(1us);
    ++quick;
  }
  CHECK(quick <= 6);
  CHECK(idle.budget() > 0ns);
  CHECK(idle.budget() <= 100us);
}

TEST_CASE("idle poll: spin returns as soon as work is ready, and gives up at the budget",
          "[idle]") {
  IdlePoll idle(1ms);
  int looks = 0;
  CHECK(idle.spin([&] { return ++looks == 3; }));
  CHECK(looks == 3);

  // Never ready: spin ends false once the budget (max/16 here: the recorded
  // gap above was tiny) has passed, and not long after.
  const auto start = IdlePoll::Clock::now();
  CHECK_FALSE(idle.spin([] { return false; }));
  const auto took = IdlePoll::Clock::now() - start;
  CHECK(took >= idle.budget());
  CHECK(took < 1s);  // bounded, not a timing target
}
