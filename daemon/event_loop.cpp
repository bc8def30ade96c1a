#include "event_loop.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

namespace ublkd {

namespace {
constexpr uint64_t kWakeSerial = 0;
}

Result<std::unique_ptr<EventLoop>> EventLoop::create() {
  UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep) return errno_error("epoll_create1");
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return errno_error("eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeSerial;
  if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, wake.get(), &ev) != 0)
    return errno_error("epoll_ctl add wake fd");
  return std::unique_ptr<EventLoop>(new EventLoop(std::move(ep), std::move(wake)));
}

Result<void> EventLoop::add(int fd, uint32_t events, FdCallback cb) {
  const uint64_t serial = next_serial_++;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = serial;
  if (::epoll_ctl(epfd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
    return errno_error("epoll_ctl add fd " + std::to_string(fd));
  watches_[serial] = std::make_shared<Watch>(Watch{fd, std::move(cb)});
  by_fd_[fd] = serial;
  return {};
}

Result<void> EventLoop::modify(int fd, uint32_t events) {
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return Error(ENOENT, "fd " + std::to_string(fd) + " is not watched");
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = it->second;
  if (::epoll_ctl(epfd_.get(), EPOLL_CTL_MOD, fd, &ev) != 0)
    return errno_error("epoll_ctl mod fd " + std::to_string(fd));
  return {};
}

void EventLoop::remove(int fd) {
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return;
  (void)::epoll_ctl(epfd_.get(), EPOLL_CTL_DEL, fd, nullptr);
  watches_.erase(it->second);
  by_fd_.erase(it);
}

Result<void> EventLoop::every(std::chrono::milliseconds period, std::function<void()> fn) {
  UniqueFd tfd(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!tfd) return errno_error("timerfd_create");
  itimerspec its{};
  its.it_interval.tv_sec = period.count() / 1000;
  its.it_interval.tv_nsec = (period.count() % 1000) * 1'000'000;
  its.it_value = its.it_interval;
  if (::timerfd_settime(tfd.get(), 0, &its, nullptr) != 0) return errno_error("timerfd_settime");
  const int fd = tfd.get();
  auto r = add(fd, EPOLLIN, [fd, fn = std::move(fn)](uint32_t) {
    uint64_t expirations;
    if (::read(fd, &expirations, sizeof(expirations)) == sizeof(expirations)) fn();
  });
  if (!r) return r;
  timers_.push_back(std::move(tfd));
  return {};
}

void EventLoop::post(std::function<void()> fn) {
  {
    std::lock_guard lock(mu_);
    posted_.push_back(std::move(fn));
  }
  const uint64_t one = 1;
  (void)!::write(wakefd_.get(), &one, sizeof(one));
}

void EventLoop::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  const uint64_t one = 1;
  (void)!::write(wakefd_.get(), &one, sizeof(one));
}

void EventLoop::drain_posted() {
  uint64_t v;
  (void)!::read(wakefd_.get(), &v, sizeof(v));
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard lock(mu_);
    batch.swap(posted_);
  }
  for (auto& fn : batch) fn();
}

Result<void> EventLoop::run() {
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return {};
    }
    epoll_event evs[32];
    const int n = ::epoll_wait(epfd_.get(), evs, 32, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_error("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      // A copy: epoll_event is packed on x86-64, so its u64 is misaligned
      // and must not be bound to the reference find() takes.
      const uint64_t serial = evs[i].data.u64;
      if (serial == kWakeSerial) {
        drain_posted();
        continue;
      }
      auto it = watches_.find(serial);
      if (it == watches_.end()) continue;  // removed earlier in this batch
      // Hold a reference: the callback may remove its own watch.
      std::shared_ptr<Watch> w = it->second;
      w->cb(evs[i].events);
    }
  }
}

}  // namespace ublkd
