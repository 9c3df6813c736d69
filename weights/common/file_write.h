// Writing an output file without ever leaving it half-written or clobbering
// something that is not a regular file.
//
// Design decision: every writer in gati (model and cache files, traces,
// JSON reports, traces for Perfetto) goes through write_file_atomically: the
// bytes go to a temporary file in the destination's folder, are flushed and
// closed with every error checked, and only then renamed over the
// destination, so a reader sees the old file or the new one, never a torn
// one, and a failed write (disk full) is an error that leaves no temporary
// behind.  Destinations must be regular files or not exist: a device, a
// named pipe or a directory is refused, and a symbolic link is followed, so
// the link stays a link and its target is replaced.
#pragma once

#include <functional>
#include <ostream>
#include <string>

namespace gati {

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& fill);

// For inputs: throws when `path` exists (after symbolic links) and is not a
// regular file, naming `what` ("trace"): a folder, a device or a named pipe
// is refused before it is opened (reading a pipe would block forever, and a
// folder's size reads as 2^63).
void require_regular_file(const std::string& path, const char* what);

}  // namespace gati
