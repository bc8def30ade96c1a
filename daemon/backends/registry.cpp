// The one table of backend types (backend_type.h). A new type is a file of
// its own beside this one and a row here.
#include "backends/backend_type.h"

namespace ublkd {

// The rows, each defined in a file of its own.
extern const BackendType kMemBackendType;
extern const BackendType kFileBackendType;
extern const BackendType kNullBackendType;
extern const BackendType kNbdBackendType;
extern const BackendType kRbdBackendType;

namespace {

const BackendType* const kBackendTypes[] = {
    &kMemBackendType,
    &kFileBackendType,
    &kNullBackendType,
    &kNbdBackendType,
    &kRbdBackendType,
};

}  // namespace

std::span<const BackendType* const> backend_types() {
  return kBackendTypes;
}

const BackendType* find_backend_type(std::string_view name) {
  for (const BackendType* t : kBackendTypes) {
    if (t->name == name) return t;
  }
  return nullptr;
}

}  // namespace ublkd
