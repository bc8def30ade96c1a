// The promise: while a device exists, STATE_DIR/names/ublkbN holds its
// name (what udev's rule reads for /dev/ublk/by-name), and withdrawing a
// device's name never takes away the name of another device that took its
// id since.
#include "device_names.h"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>

#include "temp_dir.h"

using ublkd::DeviceNames;
using ublkd::test::TempDir;

namespace {

std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

TEST_CASE("device names: published per block device, withdrawn only by their owner", "[names]") {
  TempDir dir;
  const auto names_dir = dir.path() / "names";
  DeviceNames names(names_dir);
  REQUIRE(names.publish(3, "disk0").ok());
  CHECK(read_all(names_dir / "ublkb3") == "disk0\n");

  // The id went to another device: the old owner's withdrawal leaves it.
  REQUIRE(names.publish(3, "disk1").ok());
  names.withdraw(3, "disk0");
  CHECK(read_all(names_dir / "ublkb3") == "disk1\n");
  names.withdraw(3, "disk1");
  CHECK_FALSE(std::filesystem::exists(names_dir / "ublkb3"));
  names.withdraw(4, "nothing");  // nothing there: no error

  CHECK(DeviceNames::stable_path("disk0") == "/dev/ublk/by-name/disk0");
}
