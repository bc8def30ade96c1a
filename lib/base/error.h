// The one error type of the project: an errno value plus the context that
// produced it. Every layer returns it instead of throwing; callers add their
// own context with wrap() and the top level logs it once.
#pragma once

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace ublkd {

class Error {
 public:
  // code is a positive errno value; a negative one (as the kernel and liburing
  // return them) is normalised so both conventions can be passed straight in.
  Error(int code, std::string message)
      : code_(code < 0 ? -code : code), message_(std::move(message)) {}

  int code() const { return code_; }
  const std::string& message() const { return message_; }

  // "message: strerror(code)" unless the message already explains itself
  // (code 0 is not used; EINVAL-style validation errors carry their own text).
  std::string to_string() const {
    if (code_ == 0) return message_;
    return message_ + ": " + std::strerror(code_);
  }

  // Prefix with the caller's context: "add device mem0: " + inner.
  Error wrap(std::string_view context) const {
    std::string m(context);
    m += ": ";
    m += message_;
    return Error(code_, std::move(m));
  }

 private:
  int code_;
  std::string message_;
};

// Error from the current errno, for wrapping a failed libc call.
inline Error errno_error(std::string message) {
  return Error(errno, std::move(message));
}

// A value or the error that prevented it. E is Error everywhere below the
// daemon's operations, which fail with their own kind (OpError). It is a
// std::variant<T, E> underneath, so std::get_if and friends work as well.
template <typename T, typename E = Error>
class [[nodiscard]] Result : public std::variant<T, E> {
  static_assert(!std::is_same_v<T, E>, "a value and an error of one type cannot be told apart");
  using Base = std::variant<T, E>;

 public:
  Result(T value) : Base(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(E error) : Base(std::in_place_index<1>, std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return this->index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(*this); }
  const T& value() const& { return std::get<0>(*this); }
  T&& value() && { return std::get<0>(std::move(*this)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const E& error() const& { return std::get<1>(*this); }
  E&& error() && { return std::get<1>(std::move(*this)); }
};

template <typename E>
class [[nodiscard]] Result<void, E> {
 public:
  Result() = default;
  Result(E error) : e_(std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return !e_.has_value(); }
  explicit operator bool() const { return ok(); }
  const E& error() const { return *e_; }

 private:
  std::optional<E> e_;
};

}  // namespace ublkd
