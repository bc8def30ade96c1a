// ublkctl: the command-line client of ublkd's admin socket. All of the work
// is in ctl/; this only binds it to the process's arguments and streams.
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "ctl/commands.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);

  ublkd::ctl::Environment env;
  if (const char* socket = std::getenv("UBLKD_SOCKET")) env.socket = socket;
  // Without a working directory a relative --path cannot be resolved; it is
  // then sent as given and the daemon rejects or resolves it.
  if (char* cwd = ::getcwd(nullptr, 0)) {
    env.cwd = cwd;
    std::free(cwd);
  }

  ublkd::ctl::RunOptions options;
  if (std::getenv("NOTIFY_SOCKET") != nullptr) {
    options.notify = [](const std::string& state) { (void)sd_notify(0, state.c_str()); };
  }
  const int status = ublkd::ctl::run(args, env, std::cout, std::cerr, options);
  // Output lost to a full disk must not pass for success.
  errno = 0;
  std::cout.flush();
  if (!std::cout) {
    std::cerr << "ublkctl: cannot write to standard output"
              << (errno != 0 ? std::string(": ") + std::strerror(errno) : std::string()) << '\n';
    return 1;
  }
  return status;
}
