#include <catch2/catch.hpp>

#include <string>
#include <tuple>
#include <vector>

#include "device/state_machine.h"

using namespace ublkd;
using S = DeviceState;

namespace {

const std::vector<S> kAll = {S::kNew,          S::kAdded,  S::kParamsSet, S::kQueuesPrimed,
                             S::kStartPending, S::kLive,   S::kStopping,  S::kRemovedPending,
                             S::kRemoved,      S::kFailed, S::kRecovering};

}  // namespace

TEST_CASE("every state has its documented name", "[state]") {
  CHECK(to_string(S::kNew) == "new");
  CHECK(to_string(S::kAdded) == "added");
  CHECK(to_string(S::kParamsSet) == "params-set");
  CHECK(to_string(S::kQueuesPrimed) == "queues-primed");
  CHECK(to_string(S::kStartPending) == "start-pending");
  CHECK(to_string(S::kLive) == "live");
  CHECK(to_string(S::kStopping) == "stopping");
  CHECK(to_string(S::kRemovedPending) == "removed-pending");
  CHECK(to_string(S::kRemoved) == "removed");
  CHECK(to_string(S::kFailed) == "failed");
  CHECK(to_string(S::kRecovering) == "recovering");
}

TEST_CASE("the legal transition table, exhaustively", "[state]") {
  // (from, to) pairs that are allowed; every other pair must be refused.
  const std::vector<std::pair<S, S>> allowed = {
      {S::kNew, S::kAdded},
      {S::kNew, S::kRecovering},
      {S::kNew, S::kFailed},
      {S::kNew, S::kRemovedPending},
      {S::kAdded, S::kParamsSet},
      {S::kAdded, S::kStopping},
      {S::kAdded, S::kFailed},
      {S::kParamsSet, S::kQueuesPrimed},
      {S::kParamsSet, S::kStopping},
      {S::kParamsSet, S::kFailed},
      {S::kQueuesPrimed, S::kStartPending},
      {S::kQueuesPrimed, S::kStopping},
      {S::kQueuesPrimed, S::kFailed},
      {S::kStartPending, S::kLive},
      {S::kStartPending, S::kStopping},
      {S::kStartPending, S::kFailed},
      {S::kLive, S::kStopping},
      {S::kLive, S::kFailed},
      {S::kRecovering, S::kLive},
      {S::kRecovering, S::kStopping},
      {S::kRecovering, S::kFailed},
      {S::kStopping, S::kRemoved},
      {S::kStopping, S::kRemovedPending},
      {S::kStopping, S::kFailed},
      {S::kRemovedPending, S::kRemoved},
  };
  for (S from : kAll) {
    for (S to : kAll) {
      const bool expect =
          std::find(allowed.begin(), allowed.end(), std::make_pair(from, to)) != allowed.end();
      INFO(std::string(to_string(from)) + " -> " + std::string(to_string(to)));
      CHECK(transition_allowed(from, to) == expect);
    }
  }
}

TEST_CASE("START_DEV can only follow primed queues", "[state]") {
  for (S from : kAll) {
    INFO(std::string(to_string(from)));
    CHECK(transition_allowed(from, S::kStartPending) == (from == S::kQueuesPrimed));
  }
}

TEST_CASE("terminal states accept nothing but the kernel's release", "[state]") {
  for (S to : kAll) {
    CHECK_FALSE(transition_allowed(S::kRemoved, to));
    CHECK_FALSE(transition_allowed(S::kFailed, to));
    CHECK(transition_allowed(S::kRemovedPending, to) == (to == S::kRemoved));
  }
  CHECK(is_terminal(S::kRemovedPending));
}

TEST_CASE("the machine walks the happy path and reports every step", "[state]") {
  std::vector<std::tuple<S, S, std::string>> seen;
  StateMachine sm([&](S from, S to, const std::string& reason) {
    seen.emplace_back(from, to, reason);
  });
  CHECK(sm.state() == S::kNew);
  for (S s : {S::kAdded, S::kParamsSet, S::kQueuesPrimed, S::kStartPending, S::kLive,
              S::kStopping, S::kRemoved}) {
    REQUIRE(sm.transition(s).ok());
  }
  CHECK(sm.state() == S::kRemoved);
  REQUIRE(seen.size() == 7);
  CHECK(std::get<0>(seen[0]) == S::kNew);
  CHECK(std::get<1>(seen[0]) == S::kAdded);
  CHECK(std::get<0>(seen[6]) == S::kStopping);
  CHECK(std::get<1>(seen[6]) == S::kRemoved);
  CHECK(sm.failure_reason().empty());
}

TEST_CASE("an illegal step is refused and changes nothing", "[state]") {
  int calls = 0;
  StateMachine sm([&](S, S, const std::string&) { ++calls; });
  REQUIRE(sm.transition(S::kAdded).ok());
  auto r = sm.transition(S::kLive);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == EINVAL);
  CHECK(r.error().message() == "illegal state transition added -> live");
  CHECK(sm.state() == S::kAdded);
  CHECK(calls == 1);
}

TEST_CASE("failure keeps its reason and is final", "[state]") {
  std::string logged;
  StateMachine sm([&](S, S to, const std::string& reason) {
    if (to == S::kFailed) logged = reason;
  });
  REQUIRE(sm.transition(S::kAdded).ok());
  REQUIRE(sm.transition(S::kParamsSet).ok());
  REQUIRE(sm.transition(S::kQueuesPrimed).ok());
  REQUIRE(sm.transition(S::kStartPending).ok());
  REQUIRE(sm.transition(S::kFailed, "START_DEV timed out after 10000 ms").ok());
  CHECK(sm.state() == S::kFailed);
  CHECK(sm.failure_reason() == "START_DEV timed out after 10000 ms");
  CHECK(logged == "START_DEV timed out after 10000 ms");
  CHECK_FALSE(sm.transition(S::kRemoved).ok());
  CHECK_FALSE(sm.transition(S::kFailed, "again").ok());
  CHECK(sm.failure_reason() == "START_DEV timed out after 10000 ms");
}
