// Fashion-MNIST: the real files from Debian's package, and damaged copies.
#include <zlib.h>
#include <cstdint>

#include "loaders/fashion_mnist.h"
#include "test_util.h"
#include "weights/common/error.h"

namespace gati {
namespace {

void write_gz(const std::filesystem::path& p, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(p.string().c_str(), "wb");
  ASSERT_TRUE(f);
  if (!bytes.empty()) gzwrite(f, bytes.data(), unsigned(bytes.size()));
  gzclose(f);
}

std::vector<uint8_t> idx(uint32_t magic, std::vector<uint32_t> dims, size_t payload, uint8_t fill = 3) {
  std::vector<uint8_t> b;
  auto be = [&](uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(v >> s));
  };
  be(magic);
  for (uint32_t d : dims) be(d);
  b.insert(b.end(), payload, fill);
  return b;
}

TEST(FashionMnist, RealTestSplit) {
  const std::string dir = default_fashion_mnist_dir();
  const Dataset d = load_fashion_mnist(dir, "test");
  EXPECT_EQ(d.n, 10000);
  EXPECT_EQ(d.h, 28);
  EXPECT_EQ(d.w, 28);
  std::vector<int> counts(10, 0);
  for (int l : d.labels) counts[size_t(l)]++;
  for (int c : counts) EXPECT_EQ(c, 1000);  // the test split is balanced
  float lo = 1, hi = 0;
  for (float v : d.images) lo = std::min(lo, v), hi = std::max(hi, v);
  EXPECT_EQ(lo, 0.f);
  EXPECT_EQ(hi, 1.f);
  EXPECT_EQ(load_fashion_mnist(dir, "train", 100).n, 100);
}

class BadFiles : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::scratch_dir("fm"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void write(const std::vector<uint8_t>& images, const std::vector<uint8_t>& labels) {
    write_gz(dir_ / "t10k-images-idx3-ubyte.gz", images);
    write_gz(dir_ / "t10k-labels-idx1-ubyte.gz", labels);
  }
  Dataset load() { return load_fashion_mnist(dir_.string(), "test"); }
  std::filesystem::path dir_;
};

TEST_F(BadFiles, GoodSmallFileLoads) {
  write(idx(0x803, {2, 4, 4}, 32, 255), idx(0x801, {2}, 2, 9));
  const Dataset d = load();
  EXPECT_EQ(d.n, 2);
  EXPECT_EQ(d.images[0], 1.f);
  EXPECT_EQ(d.labels[1], 9);
}

TEST_F(BadFiles, MissingFolder) {
  EXPECT_GATI_ERROR(load_fashion_mnist((dir_ / "nope").string(), "test"), "apt-get install dataset-fashion-mnist");
}

TEST_F(BadFiles, UnknownSplit) { EXPECT_GATI_ERROR(load_fashion_mnist(dir_.string(), "val"), "(valid: train, test)"); }

TEST_F(BadFiles, BadMagic) {
  write(idx(0x802, {2, 4, 4}, 32), idx(0x801, {2}, 2));
  EXPECT_GATI_ERROR(load(), "bad IDX magic");
}

TEST_F(BadFiles, TruncatedPayload) {
  write(idx(0x803, {2, 4, 4}, 20), idx(0x801, {2}, 2));
  EXPECT_GATI_ERROR(load(), "truncated or damaged");
}

TEST_F(BadFiles, CountMismatch) {
  write(idx(0x803, {2, 4, 4}, 32), idx(0x801, {3}, 3));
  EXPECT_GATI_ERROR(load(), "2 images but");
}

TEST_F(BadFiles, LabelOutOfRange) {
  write(idx(0x803, {2, 4, 4}, 32), idx(0x801, {2}, 2, 10));
  EXPECT_GATI_ERROR(load(), "label 10 at index 0 is not in 0..9");
}

// A small file that inflates far past what its header describes (a gzip
// bomb) stops at the header's size, not after inflating everything; a header
// that claims more than a gibibyte is refused outright.
TEST_F(BadFiles, GzipBombStopsAtTheHeadersSize) {
  write(idx(0x803, {2, 4, 4}, 8 << 20), idx(0x801, {2}, 2));  // 32 bytes promised, 8 MiB inflated
  EXPECT_GATI_ERROR(load(), "inflates to more than the 48 bytes its IDX header describes");
  write(idx(0x803, {60000, 60000, 28}, 64), idx(0x801, {2}, 2));
  EXPECT_GATI_ERROR(load(), "over the limit of 1 GiB");
}

TEST_F(BadFiles, TruncatedGzipStream) {
  write(idx(0x803, {200, 28, 28}, 200 * 784), idx(0x801, {200}, 200));
  std::vector<uint8_t> gz = test::read_bytes(dir_ / "t10k-images-idx3-ubyte.gz");
  gz.resize(gz.size() / 2);
  test::write_bytes(dir_ / "t10k-images-idx3-ubyte.gz", gz);
  EXPECT_THROW(load(), Error);
}

}  // namespace
}  // namespace gati
