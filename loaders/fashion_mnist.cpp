// Fashion-MNIST IDX reader; see fashion_mnist.h.
#include "loaders/fashion_mnist.h"

#include <zlib.h>
#include <cstdint>

#include <sys/stat.h>
#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "weights/common/error.h"
#include "weights/common/file_write.h"

namespace gati {
namespace {

uint32_t be32(const std::vector<unsigned char>& b, size_t at) {
  return uint32_t(b[at]) << 24 | uint32_t(b[at + 1]) << 16 | uint32_t(b[at + 2]) << 8 | uint32_t(b[at + 3]);
}

// Returns the dimensions of an IDX file of unsigned bytes with `ndim` dims.
std::vector<uint32_t> idx_header(const std::vector<unsigned char>& b, int ndim, const std::string& path) {
  if (b.size() < 4 + 4 * size_t(ndim)) fail(path, ": too short for an IDX header (", b.size(), " bytes)");
  const uint32_t magic = be32(b, 0);
  if ((magic >> 8) != 0x08 || int(magic & 0xff) != ndim)
    fail(path, ": bad IDX magic 0x", std::hex, magic, std::dec, " (expected unsigned bytes with ", ndim,
         " dimensions)");
  std::vector<uint32_t> dims;
  size_t total = 1;
  for (int i = 0; i < ndim; ++i) {
    dims.push_back(be32(b, 4 + 4 * size_t(i)));
    total *= dims.back();
  }
  const size_t need = 4 + 4 * size_t(ndim) + total;
  if (b.size() != need)
    fail(path, ": ", b.size(), " bytes, but its header describes ", need, " (truncated or damaged)");
  return dims;
}

}  // namespace

std::string default_fashion_mnist_dir() {
  const char* env = std::getenv("GATI_FASHION_MNIST");
  return env && *env ? env : "/usr/share/datasets/fashion-mnist";
}

std::vector<unsigned char> read_gzip_file(const std::string& path, int idx_dims) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0)
    fail(path, ": cannot open (", std::strerror(errno),
         "); Fashion-MNIST comes with `apt-get install dataset-fashion-mnist`",
         " or set GATI_FASHION_MNIST to its folder");
  require_regular_file(path, "IDX");
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) fail(path, ": cannot open");
  std::vector<unsigned char> out;
  unsigned char buf[1 << 16];
  for (;;) {
    const int got = gzread(f, buf, sizeof buf);
    if (got < 0) {
      int errnum = 0;
      std::string msg = gzerror(f, &errnum);
      gzclose(f);
      fail(path, ": gzip error (", msg, ")");
    }
    if (got == 0) break;
    out.insert(out.end(), buf, buf + got);
    // Stop a small file that inflates without end (a gzip bomb) as soon as
    // it passes the size its IDX header describes.
    const size_t header = 4 + 4 * size_t(std::max(idx_dims, 0));
    if (idx_dims > 0 && out.size() >= header) {
      size_t body = 1;  // the product of the dimensions, saturating at 2^40
      for (int i = 0; i < idx_dims; ++i) {
        const size_t d = be32(out, 4 + 4 * size_t(i));
        body = d != 0 && body > (size_t(1) << 40) / d ? size_t(1) << 40 : body * d;
      }
      if (body > (size_t(1) << 30)) {
        gzclose(f);
        fail(path, ": its IDX header describes ", body, " bytes, over the limit of 1 GiB (damaged?)");
      }
      if (out.size() > header + body) {
        gzclose(f);
        fail(path, ": inflates to more than the ", header + body, " bytes its IDX header describes (damaged?)");
      }
    }
  }
  // zlib reports a truncated stream only at close.
  const int rc = gzclose(f);
  if (rc != Z_OK) fail(path, ": gzip stream is damaged or truncated (zlib code ", rc, ")");
  return out;
}

namespace {

// The split's images and labels files.
std::pair<std::string, std::string> split_files(const std::string& dir, const std::string& split) {
  std::string prefix;
  if (split == "train") {
    prefix = "train";
  } else if (split == "test") {
    prefix = "t10k";
  } else {
    fail("fashion-mnist: unknown split '", split, "' (valid: train, test)");
  }
  return {dir + "/" + prefix + "-images-idx3-ubyte.gz", dir + "/" + prefix + "-labels-idx1-ubyte.gz"};
}

}  // namespace

std::vector<std::string> fashion_mnist_files(const std::string& dir) {
  std::vector<std::string> files;
  for (const char* split : {"train", "test"}) {
    const auto [images, labels] = split_files(dir, split);
    files.push_back(images);
    files.push_back(labels);
  }
  return files;
}

Dataset load_fashion_mnist(const std::string& dir, const std::string& split, int limit) {
  const auto [ipath, lpath] = split_files(dir, split);
  const std::vector<unsigned char> ib = read_gzip_file(ipath, 3);
  const std::vector<unsigned char> lb = read_gzip_file(lpath, 1);
  const std::vector<uint32_t> idims = idx_header(ib, 3, ipath);
  const std::vector<uint32_t> ldims = idx_header(lb, 1, lpath);
  if (idims[0] != ldims[0]) fail(ipath, ": ", idims[0], " images but ", lpath, " has ", ldims[0], " labels");
  if (idims[1] == 0 || idims[2] == 0) fail(ipath, ": empty images");
  Dataset d;
  d.name = "fashion-mnist/" + split;
  d.n = int(idims[0]);
  if (limit > 0 && limit < d.n) d.n = limit;
  d.c = 1;
  d.h = int(idims[1]);
  d.w = int(idims[2]);
  d.classes = 10;
  const size_t per = size_t(d.h) * size_t(d.w);
  d.images.resize(size_t(d.n) * per);
  for (size_t i = 0; i < d.images.size(); ++i) d.images[i] = float(ib[16 + i]) / 255.0f;
  d.labels.resize(size_t(d.n));
  for (int i = 0; i < d.n; ++i) {
    d.labels[size_t(i)] = lb[8 + size_t(i)];
    if (d.labels[size_t(i)] >= d.classes)
      fail(lpath, ": label ", d.labels[size_t(i)], " at index ", i, " is not in 0..9");
  }
  return d;
}

}  // namespace gati
