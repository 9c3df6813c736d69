// Command-line helpers; see cli_util.h.
#include "tools/cli_util.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "weights/common/error.h"
#include "weights/common/file_write.h"

namespace gati::cli {

namespace fs = std::filesystem;

Progress::Progress(size_t total, std::string label)
    : total_(total),
      label_(std::move(label)),
      tty_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

Progress::~Progress() { finish(); }

void Progress::update(size_t done, const std::string& extra) {
  if (finished_) return;
  const auto now = std::chrono::steady_clock::now();
  const auto every = tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(10000);
  if (now - last_ < every && (done < total_ || !tty_)) return;
  last_ = now;
  const double frac = total_ ? double(done) / double(total_) : 1.0;
  const double secs = std::chrono::duration<double>(now - start_).count();
  const double eta = frac > 0 ? secs * (1 - frac) / frac : 0;
  if (tty_) {
    const int width = 30, filled = int(frac * width);
    std::fprintf(stderr, "\r%s [%s%s] %zu/%zu %5.1f%% %.0fs eta %.0fs %s", label_.c_str(),
                 std::string(size_t(filled), '#').c_str(), std::string(size_t(width - filled), '.').c_str(), done,
                 total_, 100 * frac, secs, eta, extra.c_str());
  } else {
    std::fprintf(stderr, "%s: %zu/%zu (%.1f%%) after %.0fs, eta %.0fs %s\n", label_.c_str(), done, total_, 100 * frac,
                 secs, eta, extra.c_str());
  }
  printed_ = true;
  std::fflush(stderr);
}

void Progress::finish() {
  if (tty_ && printed_ && !finished_) std::fprintf(stderr, "\n");
  finished_ = true;
}

namespace {

// The same file, or (for files not there yet) the same path once links
// and dots are resolved.
bool same_file(const std::string& a, const std::string& b) {
  std::error_code e1, e2, e3;
  if (fs::equivalent(a, b, e1)) return true;
  // Absolute first: "X" and "./X" resolve alike even when X does not exist.
  const fs::path ca = fs::weakly_canonical(fs::absolute(a, e2), e2), cb = fs::weakly_canonical(fs::absolute(b, e3), e3);
  return !e2 && !e3 && ca == cb;
}

}  // namespace

void check_outputs(const std::vector<Output>& outputs, const std::vector<std::string>& inputs) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Output& o = outputs[i];
    if (o.path.empty()) continue;
    std::error_code ec;
    const fs::file_status st = fs::status(o.path, ec);
    if (fs::exists(st) && !fs::is_regular_file(st))
      fail(o.option, " '", o.path, "': exists and is not a regular file (a directory, device or pipe); ",
           "refusing to replace it");
    if (!fs::exists(st) && fs::is_symlink(fs::symlink_status(o.path, ec)))
      fail(o.option, " '", o.path, "': is a symbolic link whose target does not exist");
    const fs::path folder = fs::path(o.path).parent_path();
    if (!folder.empty() && !fs::is_directory(folder, ec))
      fail(o.option, " '", o.path, "': '", folder.string(), "' ",
           fs::exists(folder, ec) ? "is not a folder" : "is a folder that does not exist");
    // Room for the temporary name written beside it (".tmp.PID.N").
    const size_t name = fs::path(o.path).filename().string().size();
    if (name + 32 > 255)
      fail(o.option, " '", o.path, "': the file name is ", name, " characters long; at most 223 fit");
    for (const std::string& in : inputs)
      if (!in.empty() && same_file(o.path, in))
        fail(o.option, " '", o.path, "' is the input file '", in, "'; refusing to overwrite it");
    for (size_t j = 0; j < i; ++j)
      if (!outputs[j].path.empty() && same_file(o.path, outputs[j].path))
        fail(o.option, " '", o.path, "' is also ", outputs[j].option, "'s file; give each output its own");
  }
}

void write_text(const std::string& path, const std::string& text) {
  write_file_atomically(path, [&](std::ostream& out) { out << text; });
}

std::string human_bytes(size_t bytes) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, unit[u]);
  return buf;
}

}  // namespace gati::cli
