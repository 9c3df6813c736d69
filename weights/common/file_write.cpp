// Safe output files; see file_write.h.
#include "weights/common/file_write.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "weights/common/error.h"

namespace gati {

namespace fs = std::filesystem;

void require_regular_file(const std::string& path, const char* what) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) return;  // the caller's open reports it, with its own hint
  if (fs::is_directory(st)) fail(path, ": is a folder, not a ", what, " file");
  if (!fs::is_regular_file(st))
    fail(path, ": is not a regular file (a device or pipe?); the ", what, " file must be one");
}

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& fill) {
  if (path.empty()) fail("output path is empty");
  std::error_code ec;
  fs::path dest = path;
  if (fs::is_symlink(fs::symlink_status(dest, ec))) {
    dest = fs::canonical(dest, ec);  // replace the link's target, keep the link
    if (ec) fail(path, ": is a symbolic link whose target cannot be resolved (", ec.message(), ")");
  }
  const fs::file_status st = fs::status(dest, ec);
  if (fs::exists(st) && !fs::is_regular_file(st))
    fail(path, ": exists and is not a regular file (a directory, device or pipe); refusing to replace it");
  // Unique within the process too: two threads may write beside each other.
  static std::atomic<unsigned> sequence{0};
  const fs::path tmp = dest.string() + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(sequence++);
  try {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail(path, ": cannot open ", tmp.string(), " for writing (", std::strerror(errno), ")");
    fill(out);
    out.flush();
    if (!out) fail(path, ": write failed (disk full?)");
    out.close();
    if (out.fail()) fail(path, ": closing the file failed (disk full?)");
    fs::rename(tmp, dest, ec);
    if (ec) fail(path, ": cannot replace it (", ec.message(), ")");
  } catch (...) {
    fs::remove(tmp, ec);
    throw;
  }
}

}  // namespace gati
