// One thing wrong with a configuration file. Configuration is checked as a
// whole so that `ublkd --check-config` can list every mistake at once instead
// of making the administrator fix them one restart at a time.
#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <vector>

#include "base/error.h"

namespace ublkd {

struct ConfigProblem {
  std::string origin;   // the file, or "" when the text did not come from one
  std::string field;    // JSON path such as "backend.size"; "" for the whole document
  std::string message;  // names the offending value where there is one

  // "FILE: field: message", leaving out the parts that are empty.
  std::string to_string() const {
    std::string s;
    if (!origin.empty()) s += origin + ": ";
    if (!field.empty()) s += field + ": ";
    s += message;
    return s;
  }

  bool operator==(const ConfigProblem&) const = default;
};

// Every problem on its own line, for callers that only want an Error.
inline Error problems_error(const std::vector<ConfigProblem>& problems) {
  std::string m;
  for (const ConfigProblem& p : problems) {
    if (!m.empty()) m += '\n';
    m += p.to_string();
  }
  return Error(EINVAL, std::move(m));
}

}  // namespace ublkd
