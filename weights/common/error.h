// Errors are exceptions that say what, where and why.
//
// Everything a user controls (files, shapes, configs, inputs) is checked and
// reported through gati::Error with the offending name in the message; there is
// no assert on user input anywhere in the engine.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace gati {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <class... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(str_cat(args...));
}

}  // namespace gati
