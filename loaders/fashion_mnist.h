// Fashion-MNIST from Debian's dataset-fashion-mnist package (gzipped IDX).
//
// Images come back as float NCHW [n, 1, 28, 28] in [0, 1]; normalisation is
// the model's business (Engine::normalize).  Every malformed file fails with
// its path and what was wrong (magic, dimensions, counts, truncation).
#pragma once

#include <string>
#include <vector>

namespace gati {

struct Dataset {
  std::string name;
  int n = 0, c = 0, h = 0, w = 0;
  int classes = 0;
  std::vector<float> images;  // [n, c, h, w]
  std::vector<int> labels;    // [n]
  const float* image(int i) const { return images.data() + size_t(i) * size_t(c) * size_t(h) * size_t(w); }
  size_t image_floats() const { return size_t(c) * size_t(h) * size_t(w); }
};

// $GATI_FASHION_MNIST if set, else /usr/share/datasets/fashion-mnist.
std::string default_fashion_mnist_dir();

// split: "train" (60000) or "test" (10000); limit > 0 keeps the first `limit`.
Dataset load_fashion_mnist(const std::string& dir, const std::string& split, int limit = 0);
// The data set's four files in `dir` (both splits, images and labels), so
// that a command can refuse to write over any of them.
std::vector<std::string> fashion_mnist_files(const std::string& dir);

// Reads a whole gzip (or plain) file; errors name the path.  With idx_dims
// > 0 the file is an IDX file of that many dimensions and reading stops as
// soon as it passes the size its header describes (a gzip bomb costs no
// more memory than the header claims).
std::vector<unsigned char> read_gzip_file(const std::string& path, int idx_dims = 0);

}  // namespace gati
