// Shared by the parsers of device specs and of the daemon configuration: read
// typed fields out of a JSON object and record a ConfigProblem for every
// field that is missing, of the wrong type or out of range, so that one pass
// reports everything wrong with a file. Internal to daemon/config.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config_problem.h"

namespace ublkd::config {

// A JSON value as it should appear in a message: `string "4"`, `number 2.5`,
// `array [1,2]`. Long values are shortened; never throws, even on strings
// that are not valid UTF-8.
std::string describe(const nlohmann::json& value);

// The value alone, as JSON: `"256MiB"`, `4097`.
std::string dump_value(const nlohmann::json& value);

// "backend" + "size" -> "backend.size"; "" + "name" -> "name".
std::string join_path(std::string_view prefix, std::string_view key);

class FieldReader {
 public:
  FieldReader(std::string_view origin, std::vector<ConfigProblem>& problems)
      : origin_(origin), problems_(problems) {}

  void problem(std::string field, std::string message);

  // Problems recorded so far, by anyone, into the shared list; compare before
  // and after to learn whether a document was clean.
  size_t problem_count() const { return problems_.size(); }

  // Parses a whole document. A syntax error becomes a problem naming the line
  // and column (counted in characters, as editors do).
  std::optional<nlohmann::json> parse(std::string_view text);

  // Records a problem unless value is an object; `field` names value itself.
  bool expect_object(const nlohmann::json& value, std::string_view field);

  // One problem per key of `object` that is not in `known`.
  void reject_unknown_keys(const nlohmann::json& object, std::string_view prefix,
                           const std::vector<std::string_view>& known);

  // The readers below look up `key` in `object` (which must be an object) and
  // return nullopt both when it is absent and when it is wrong; only a
  // required absent key and a wrong value are problems.
  std::optional<std::string> string(const nlohmann::json& object, std::string_view prefix,
                                    std::string_view key, bool required);
  std::optional<bool> boolean(const nlohmann::json& object, std::string_view prefix,
                              std::string_view key, bool required);
  // A JSON integer within [min, max].
  std::optional<uint64_t> integer(const nlohmann::json& object, std::string_view prefix,
                                  std::string_view key, bool required, uint64_t min, uint64_t max);
  // Any JSON number within (0, max].
  std::optional<double> positive_number(const nlohmann::json& object, std::string_view prefix,
                                        std::string_view key, bool required, uint64_t max);
  // Integer bytes or a string as parse_size() accepts it; any value,
  // including 0, so the caller can apply its own rules.
  std::optional<uint64_t> size(const nlohmann::json& object, std::string_view prefix,
                               std::string_view key, bool required);

 private:
  const nlohmann::json* find(const nlohmann::json& object, std::string_view prefix,
                             std::string_view key, bool required);
  // find(), and a problem ("expected <expected>, got ...") unless the value
  // fits; nullptr then.
  const nlohmann::json* find_typed(const nlohmann::json& object, std::string_view prefix,
                                   std::string_view key, bool required,
                                   bool (*fits)(const nlohmann::json&), std::string_view expected);

  std::string origin_;
  std::vector<ConfigProblem>& problems_;
};

}  // namespace ublkd::config
