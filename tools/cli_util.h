// Small helpers for the gati command line: a progress bar (redrawn on a
// terminal, a line every ten seconds otherwise, so long runs in CI or under
// nohup still show signs of life), safe output paths and text files.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace gati::cli {

class Progress {
 public:
  Progress(size_t total, std::string label);
  ~Progress();
  void update(size_t done, const std::string& extra = "");
  void finish();

 private:
  size_t total_;
  std::string label_;
  bool tty_;
  bool finished_ = false, printed_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

// A file a command will write, and the option that named it.
struct Output {
  std::string option, path;  // an empty path: not asked for
};
// Checked before a command starts its work, so that a refusal writes
// nothing: every output is absent or a regular file (or a link to one) in
// a folder that exists, none is one of `inputs` (the same path, a link to
// it, or the same file by another name), and no two outputs are one file.
void check_outputs(const std::vector<Output>& outputs, const std::vector<std::string>& inputs);

// Writes `text` to a temporary file beside `path`, checks the write, then
// renames it over `path`.
void write_text(const std::string& path, const std::string& text);

// "812 B", "3.4 KiB", "12.5 MiB", "1.2 GiB".
std::string human_bytes(size_t bytes);

}  // namespace gati::cli
