// Calls a function once a known number of operations have ended, for work
// that fans out over several devices and answers when the last is done.
// Single-threaded: every operation ends on the event loop's thread.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <utility>

namespace ublkd {

class Countdown {
 public:
  // Shared by the operations' completions; `done` runs at the `count`th
  // call of one_done(), at once if `count` is 0.
  static std::shared_ptr<Countdown> start(size_t count, std::function<void()> done) {
    auto c = std::shared_ptr<Countdown>(new Countdown(count, std::move(done)));
    if (count == 0) c->done_();
    return c;
  }

  void one_done() {
    if (--left_ == 0) done_();
  }

 private:
  Countdown(size_t count, std::function<void()> done) : left_(count), done_(std::move(done)) {}

  size_t left_;
  std::function<void()> done_;
};

}  // namespace ublkd
