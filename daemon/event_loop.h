// The control thread's event loop: epoll over fds with callbacks, periodic
// timers (timerfd), and post() for other threads to hand work back to the
// control thread. Everything the daemon does outside the queue threads runs
// from here, so the daemon's state needs no locks beyond this hand-off.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "base/error.h"
#include "base/unique_fd.h"

namespace ublkd {

class EventLoop {
 public:
  using FdCallback = std::function<void(uint32_t events)>;

  static Result<std::unique_ptr<EventLoop>> create();

  // Watches fd (not owned) for `events` (EPOLLIN, EPOLLOUT, ...). A callback
  // may add or remove any watch, including its own.
  Result<void> add(int fd, uint32_t events, FdCallback cb);
  Result<void> modify(int fd, uint32_t events);
  void remove(int fd);

  // Calls fn every `period` on the loop thread until the loop ends.
  Result<void> every(std::chrono::milliseconds period, std::function<void()> fn);

  // Thread-safe: fn runs on the loop thread at its next turn.
  void post(std::function<void()> fn);

  // Runs until stop(); returns an error only if epoll itself fails.
  Result<void> run();
  // Thread-safe.
  void stop();

 private:
  EventLoop(UniqueFd epfd, UniqueFd wakefd) : epfd_(std::move(epfd)), wakefd_(std::move(wakefd)) {}
  void drain_posted();

  struct Watch {
    int fd;
    FdCallback cb;
  };
  UniqueFd epfd_;
  UniqueFd wakefd_;
  // Keyed by a serial number rather than the fd: an fd closed and reused
  // inside one epoll_wait batch must not receive the old fd's events.
  std::unordered_map<uint64_t, std::shared_ptr<Watch>> watches_;
  std::unordered_map<int, uint64_t> by_fd_;
  uint64_t next_serial_ = 1;
  std::vector<UniqueFd> timers_;

  std::mutex mu_;  // guards posted_ and stopping_
  std::vector<std::function<void()>> posted_;
  bool stopping_ = false;
};

}  // namespace ublkd
