// What the queue worker lends an asynchronous backend (QueueContext), on a
// real io_uring, for unit tests that drive a backend through the Backend
// interface; and page-aligned buffers with a checkable pattern.
#pragma once

#include <liburing.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "base/error.h"
#include "queue/user_data.h"

namespace ublkd::test {

using namespace std::chrono_literals;

// What the queue worker lends a backend, on a real io_uring, with the
// worker's rules for requests the backend answers later (backend.h): a
// deadline per tag from request_timeout() or set_deadline(), a request past
// it failed with EIO and its tag stale until the backend finishes it.
class TestQueue final : public QueueContext {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Tag { kFree, kWaiting, kStale, kDone };

  TestQueue(Backend& backend, uint16_t queue_id = 0, uint16_t depth = 16)
      : backend_(backend), queue_id_(queue_id), depth_(depth), tags_(depth) {
    REQUIRE(io_uring_queue_init(2u * depth + kMaxBackendEvents, &ring_, 0) == 0);
  }
  ~TestQueue() override {
    if (attached_) backend_.detach(*this);
    io_uring_queue_exit(&ring_);
  }

  void attach() {
    auto r = backend_.attach(*this);
    if (!r) FAIL("attach: " << r.error().to_string());
    attached_ = true;
  }
  void detach() {
    backend_.detach(*this);
    attached_ = false;
  }

  uint16_t queue_id() const override { return queue_id_; }
  uint16_t depth() const override { return depth_; }
  int backend_file_index() const override { return -1; }
  io_uring_sqe* get_sqe() override {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      REQUIRE(io_uring_submit(&ring_) >= 0);
      sqe = io_uring_get_sqe(&ring_);
    }
    REQUIRE(sqe != nullptr);
    std::memset(sqe, 0, sizeof(*sqe));
    return sqe;
  }
  void finish(uint16_t tag, int result) override {
    REQUIRE(tag < depth_);
    TagState& t = tags_[tag];
    if (t.state == Tag::kStale) {
      t.state = Tag::kFree;
      ++late_answers_;
      return;
    }
    INFO("finish(" << tag << ", " << result << ")");
    REQUIRE(t.state == Tag::kWaiting);
    t.state = Tag::kDone;
    t.result = result;
  }
  bool waiting(uint16_t tag) const override { return tags_.at(tag).state == Tag::kWaiting; }
  void set_deadline(uint16_t tag, Clock::time_point deadline) override {
    REQUIRE(tag < depth_);
    tags_[tag].deadline = deadline;
  }

  // Hands a request to the backend as the worker does; the result if it
  // answered at once.
  std::optional<int> submit(IoRequest req) {
    REQUIRE(req.tag < depth_);
    TagState& t = tags_[req.tag];
    REQUIRE((t.state == Tag::kFree || t.state == Tag::kDone));
    req.queue = queue_id_;
    const auto timeout = backend_.request_timeout();
    t.deadline = timeout ? Clock::now() + *timeout : Clock::time_point::max();
    t.submitted = Clock::now();
    const int r = backend_.submit(*this, req);
    if (r == kIoQueued) {
      t.state = Tag::kWaiting;
      return std::nullopt;
    }
    t.state = Tag::kDone;
    t.result = r;
    return r;
  }

  // Runs the ring (and the deadlines) until `done` or `limit`.
  bool run_until(const std::function<bool()>& done, std::chrono::milliseconds limit = 10s) {
    const auto until = Clock::now() + limit;
    while (!done()) {
      if (Clock::now() >= until) return false;
      pump(10ms);
    }
    return true;
  }
  void run_for(std::chrono::milliseconds d) {
    const auto until = Clock::now() + d;
    while (Clock::now() < until) pump(10ms);
  }

  // Waits for the request on `tag` to end; its result.
  int wait(uint16_t tag, std::chrono::milliseconds limit = 10s) {
    INFO("tag " << tag);
    REQUIRE(run_until([&] { return tags_[tag].state != Tag::kWaiting; }, limit));
    REQUIRE((tags_[tag].state == Tag::kDone || tags_[tag].state == Tag::kStale));
    return tags_[tag].state == Tag::kDone ? tags_[tag].result : -ETIMEDOUT;
  }
  int serve(const IoRequest& req, std::chrono::milliseconds limit = 10s) {
    if (auto r = submit(req)) return *r;
    return wait(req.tag, limit);
  }

  Tag state(uint16_t tag) const { return tags_.at(tag).state; }
  int result(uint16_t tag) const { return tags_.at(tag).result; }
  Clock::time_point deadline(uint16_t tag) const { return tags_.at(tag).deadline; }
  Clock::time_point failed_at(uint16_t tag) const { return tags_.at(tag).failed_at; }
  int late_answers() const { return late_answers_; }

 private:
  struct TagState {
    Tag state = Tag::kFree;
    int result = 0;
    Clock::time_point deadline = Clock::time_point::max();
    Clock::time_point submitted{};
    Clock::time_point failed_at{};
  };

  void pump(std::chrono::milliseconds wait) {
    REQUIRE(io_uring_submit(&ring_) >= 0);
    io_uring_cqe* cqe = nullptr;
    __kernel_timespec ts{0, std::chrono::nanoseconds(wait).count()};
    const int ret = io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
    REQUIRE((ret == 0 || ret == -ETIME || ret == -EINTR));
    unsigned head;
    unsigned seen = 0;
    std::vector<io_uring_cqe> cqes;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      cqes.push_back(*cqe);
      ++seen;
    }
    io_uring_cq_advance(&ring_, seen);
    for (const auto& c : cqes) {
      INFO("user_data " << c.user_data);
      REQUIRE(ublkd::user_data::is_backend_event(c.user_data));
      backend_.on_event(*this, c);
    }
    const auto now = Clock::now();
    for (TagState& t : tags_) {
      if (t.state == Tag::kWaiting && t.deadline <= now) {
        t.state = Tag::kStale;
        t.failed_at = now;
      }
    }
  }

  Backend& backend_;
  uint16_t queue_id_;
  uint16_t depth_;
  io_uring ring_{};
  bool attached_ = false;
  std::vector<TagState> tags_;
  int late_answers_ = 0;
};

// Page aligned, as the worker's tag buffers are.
struct Buffer {
  explicit Buffer(size_t n) : size(n), p(static_cast<uint8_t*>(std::aligned_alloc(4096, n))) {
    REQUIRE(p != nullptr);
  }
  ~Buffer() { std::free(p); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  size_t size;
  uint8_t* p;
};

inline uint8_t pattern(uint64_t pos, uint32_t seed) {
  uint64_t x = (pos / 8) * 0x9E3779B97F4A7C15ull ^ seed;
  x ^= x >> 29;
  return static_cast<uint8_t>(x >> (8 * (pos % 8)));
}
inline void fill(Buffer& b, uint64_t offset, uint32_t seed, size_t n) {
  for (size_t i = 0; i < n; ++i) b.p[i] = pattern(offset + i, seed);
}
inline int64_t mismatch(const Buffer& b, uint64_t offset, uint32_t seed, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (b.p[i] != pattern(offset + i, seed)) return static_cast<int64_t>(i);
  return -1;
}
inline int64_t nonzero(const Buffer& b, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (b.p[i] != 0) return static_cast<int64_t>(i);
  return -1;
}

inline IoRequest req(IoOp op, uint16_t tag, uint64_t offset, uint32_t length, void* buf = nullptr,
                     uint32_t flags = 0) {
  IoRequest r{};
  r.op = op;
  r.flags = flags;
  r.offset = offset;
  r.length = length;
  r.buffer = buf;
  r.tag = tag;
  return r;
}

// What a backend's open() made, or the test fails with its error.
template <typename T>
std::unique_ptr<T> opened(Result<std::unique_ptr<T>> r, const std::string& what) {
  if (!r) FAIL("open " << what << ": " << r.error().to_string());
  return std::move(r).value();
}
// The error a backend's open() failed with; the test fails if it opened.
template <typename T>
Error open_failed(Result<std::unique_ptr<T>> r) {
  REQUIRE_FALSE(r.ok());
  return r.error();
}

}  // namespace ublkd::test
