// The one table of backend types (backend_type.h). A new type is a file of
// its own beside this one and a row here.
#include <algorithm>
#include <array>

#include "backends/backend_type.h"

namespace ublkd {

namespace {

const std::array<const BackendType*, 3> kBackendTypes = {
    &kMemBackendType,
    &kFileBackendType,
    &kNullBackendType,
};

}  // namespace

std::span<const BackendType* const> backend_types() {
  return kBackendTypes;
}

const BackendType* find_backend_type(std::string_view name) {
  auto it = std::find_if(kBackendTypes.begin(), kBackendTypes.end(),
                         [name](const BackendType* t) { return t->name == name; });
  return it == kBackendTypes.end() ? nullptr : *it;
}

}  // namespace ublkd
