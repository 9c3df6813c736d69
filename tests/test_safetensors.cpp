// The safetensors reader against well-formed and damaged files: every damage
// gives a gati::Error naming the problem, never a crash (this suite also runs
// under AddressSanitizer and UBSan in CI).
#include <sys/stat.h>
#include <unistd.h>
#include <cstdint>

#include <cstring>
#include <nlohmann/json.hpp>

#include "test_util.h"
#include "weights/common/error.h"
#include "weights/common/half.h"
#include "weights/common/json_read.h"
#include "weights/safetensors.h"

namespace gati {
namespace {

// Builds a file from a header JSON and a data section, as raw bytes.
std::vector<uint8_t> make_file(const std::string& header, const std::vector<uint8_t>& data, int64_t len_override = -1) {
  std::vector<uint8_t> out(8);
  const uint64_t len = len_override >= 0 ? uint64_t(len_override) : header.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = uint8_t(len >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::vector<uint8_t> floats_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

SafeTensorsFile parse(std::vector<uint8_t> bytes) {
  return SafeTensorsFile::from_bytes(std::move(bytes), "test.safetensors");
}

const std::string kTwo =
    R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"F32","shape":[2],"data_offsets":[24,32]}})";

// The strict JSON reads every reader shares: the file and key in each error,
// integers that are integers in range (a parsed 0 is unsigned in nlohmann:
// it must still meet a lower bound of 1), finite numbers, strings.
TEST(JsonFields, RefuseWhatGetWouldCoerceAndNameTheKey) {
  const nlohmann::json j = nlohmann::json::parse(
      R"({"n": 4, "zero": 0, "neg": -3, "frac": 3.7, "flag": true, "text": "12", "big": 4294967301,
          "huge": 18446744073709551615, "x": 0.25, "list": [], "obj": {"k": 1}})");
  const JsonFields f(j, "f.json");
  EXPECT_EQ(f.integer("n", 1, 8), 4);
  EXPECT_EQ(f.integer("neg", -5, 5), -3);
  EXPECT_DOUBLE_EQ(f.number("x", 0, 1), 0.25);
  EXPECT_DOUBLE_EQ(f.number("n", 0, 10), 4.0);  // an integer is a number
  EXPECT_EQ(f.object("obj").integer("k", 0, 1), 1);
  EXPECT_GATI_ERROR(f.integer("zero", 1, 8), "f.json: 'zero' must be an integer in [1, 8], got 0");
  EXPECT_GATI_ERROR(f.integer("neg", 0, 8), "'neg' must be an integer in [0, 8], got -3");
  EXPECT_GATI_ERROR(f.integer("frac", 0, 8), "'frac' must be an integer in [0, 8], got 3.7");
  EXPECT_GATI_ERROR(f.integer("flag", 0, 8), "'flag' must be an integer in [0, 8], got true");
  EXPECT_GATI_ERROR(f.integer("text", 0, 100), "'text' must be an integer in [0, 100], got \"12\"");
  EXPECT_GATI_ERROR(f.integer("big", 0, INT32_MAX), "got 4294967301");
  EXPECT_GATI_ERROR(f.integer("huge", 0, INT64_MAX), "got 18446744073709551615");
  EXPECT_GATI_ERROR(f.number("x", 0.5, 1), "'x' must be a number in [0.5, 1], got 0.25");
  EXPECT_GATI_ERROR(f.number("text", 0, 1), "'text' must be a number");
  EXPECT_GATI_ERROR(f.string("n"), "f.json: 'n' must be a string, got 4");
  EXPECT_GATI_ERROR(f.boolean("n"), "'n' must be true or false");
  EXPECT_GATI_ERROR(f.array("list"), "'list' must be a non-empty array, got []");
  EXPECT_EQ(f.array("list", true).size(), 0u);
  EXPECT_GATI_ERROR(f.at("missing"), "f.json: missing key 'missing'");
  EXPECT_GATI_ERROR(f.object("n"), "f.json: 'n' must be a JSON object, got 4");
  EXPECT_GATI_ERROR(f.object("obj").integer("k", 2, 3), "f.json: 'obj': 'k' must be an integer in [2, 3], got 1");
}

// Every reader parses through json_parse: a key given twice in one object
// is refused (nlohmann alone keeps the last, so a trace or a header could
// say two things at once), in nested objects too, and repeated keys in
// different objects are fine.
TEST(JsonFields, ParseRefusesAKeyGivenTwice) {
  EXPECT_EQ(json_parse(R"({"a": 1, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]})", "ok.json")["b"]["a"], 2);
  EXPECT_GATI_ERROR(json_parse(R"({"seed": 1, "seed": 2})", "t.json: trace"),
                    "t.json: trace: key 'seed' appears twice in one object");
  EXPECT_GATI_ERROR(json_parse(R"({"x": {"k": 1, "k": 1}})", "f"), "key 'k' appears twice");
  EXPECT_GATI_ERROR(json_parse(R"([{"k": 1}, {"k": 2, "k": 3}])", "f"), "key 'k' appears twice");
  EXPECT_GATI_ERROR(json_parse("{\"a\": ", "f.json"), "f.json is not valid JSON");
  // Deep nesting is refused while parsing (printing it in an error would
  // recurse 100000 levels), and so is a NUL byte (nlohmann stopped there).
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_GATI_ERROR(json_parse(deep, "d.json"), "d.json: nested more than 32 levels deep");
  EXPECT_GATI_ERROR(json_parse(std::string("{\"a\": 1}\0garbage", 17), "n.json"), "a NUL byte at offset 8");
  EXPECT_EQ(json_parse(std::string(30, '[') + std::string(30, ']'), "ok").size(), 1u);
  EXPECT_GATI_ERROR(parse(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32",)"
                                    R"("shape":[2],"data_offsets":[0,8]}})",
                                    {})),
                    "key 'a' appears twice");
}

TEST(SafeTensors, RoundTripThroughWriter) {
  const auto dir = test::scratch_dir("st");
  SafeTensorsWriter w;
  const std::vector<float> a = test::random_floats(6, 1);
  std::vector<uint16_t> h(4), bf(4);
  const std::vector<float> hv = {1.5f, -2.25f, 0.0009765625f, 65504.f};
  for (size_t i = 0; i < 4; ++i) {
    h[i] = float_to_half(hv[i]);
    uint32_t bits;
    std::memcpy(&bits, &hv[i], 4);
    bf[i] = uint16_t(bits >> 16);
  }
  w.add_float("a", {2, 3}, a);
  w.add("h", DType::F16, {4}, h.data());
  w.add("bf", DType::BF16, {2, 2}, bf.data());
  w.add("empty", DType::F32, {0, 3}, nullptr);
  w.set_metadata("k", "v");
  w.write((dir / "x.safetensors").string());
  const SafeTensorsFile f = SafeTensorsFile::open((dir / "x.safetensors").string());
  EXPECT_EQ(f.metadata_at("k"), "v");
  EXPECT_EQ(f.read_float("a", {2, 3}), a);
  const std::vector<float> hr = f.read_float("h", {4});
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(hr[i], hv[i]) << i;
  const std::vector<float> br = f.read_float("bf", {2, 2});
  EXPECT_EQ(br[0], 1.5f);
  EXPECT_EQ(br[1], -2.25f);
  EXPECT_EQ(f.read_float("empty", {0, 3}).size(), 0u);
  std::filesystem::remove_all(dir);
}

// Every writer goes through write_file_atomically: it replaces regular
// files only (a named pipe or a directory is refused and left as it was),
// follows a symbolic link to replace its target, and leaves no temporary
// file behind when it fails.
TEST(SafeTensors, WriterReplacesOnlyRegularFiles) {
  namespace fs = std::filesystem;
  const auto dir = test::scratch_dir("st_dest");
  SafeTensorsWriter w;
  w.add_float("a", {2}, test::random_floats(2, 3));
  auto leftovers = [&] {
    int n = 0;
    for (const auto& e : fs::directory_iterator(dir)) n += e.path().string().find(".tmp") != std::string::npos;
    return n;
  };
  const fs::path pipe = dir / "pipe";
  ASSERT_EQ(::mkfifo(pipe.c_str(), 0600), 0);
  EXPECT_GATI_ERROR(w.write(pipe.string()), "not a regular file");
  EXPECT_TRUE(fs::is_fifo(fs::symlink_status(pipe)));
  fs::create_directory(dir / "folder");
  EXPECT_GATI_ERROR(w.write((dir / "folder").string()), "not a regular file");
  EXPECT_TRUE(fs::is_directory(dir / "folder"));
  EXPECT_GATI_ERROR(w.write((dir / "missing" / "x.safetensors").string()), "cannot open");
  // A link to a model file: the target is replaced, the link stays a link.
  w.write((dir / "target.safetensors").string());
  fs::create_symlink(dir / "target.safetensors", dir / "link.safetensors");
  SafeTensorsWriter w2;
  w2.add_float("b", {3}, test::random_floats(3, 4));
  w2.write((dir / "link.safetensors").string());
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(dir / "link.safetensors")));
  EXPECT_EQ(SafeTensorsFile::open((dir / "target.safetensors").string()).names(), std::vector<std::string>{"b"});
  EXPECT_EQ(leftovers(), 0);
  fs::remove_all(dir);
}

TEST(SafeTensors, HalfConversionCoversSubnormalsAndSpecials) {
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(half_to_float(0x3c00), 1.0f);
  EXPECT_EQ(half_to_float(0xc000), -2.0f);
  EXPECT_TRUE(std::isinf(half_to_float(0x7c00)));
  EXPECT_TRUE(std::isnan(half_to_float(0x7e00)));
  for (uint32_t h = 0; h < 0x7c00; h += 7) EXPECT_EQ(float_to_half(half_to_float(uint16_t(h))), h) << h;
}

TEST(SafeTensors, ParsesWellFormedHeader) {
  const SafeTensorsFile f = parse(make_file(kTwo, floats_bytes({1, 2, 3, 4, 5, 6, 7, 8})));
  EXPECT_EQ(f.names().size(), 2u);
  EXPECT_EQ(f.read_float("b", {2}), (std::vector<float>{7, 8}));
}

TEST(SafeTensors, TooShortFile) { EXPECT_GATI_ERROR(parse({1, 2, 3}), "shorter than the 8-byte header length"); }

TEST(SafeTensors, HeaderLengthPastTheEnd) {
  EXPECT_GATI_ERROR(parse(make_file(kTwo, floats_bytes({1, 2}), 5000)), "runs past the end of the file");
  EXPECT_GATI_ERROR(parse(make_file(kTwo, {}, int64_t(1) << 40)), "implausible");
}

TEST(SafeTensors, TruncatedData) {
  EXPECT_GATI_ERROR(parse(make_file(kTwo, floats_bytes({1, 2, 3, 4, 5, 6}))), "outside the data section");
}

TEST(SafeTensors, TruncatedFileOnDisk) {
  const auto dir = test::scratch_dir("trunc");
  SafeTensorsWriter w;
  w.add_float("t", {64}, test::random_floats(64, 2));
  w.write((dir / "ok.safetensors").string());
  std::vector<uint8_t> bytes = test::read_bytes(dir / "ok.safetensors");
  for (size_t cut : {size_t(0), size_t(4), size_t(8), size_t(20), bytes.size() - 1}) {
    test::write_bytes(dir / "cut.safetensors", std::vector<uint8_t>(bytes.begin(), bytes.begin() + long(cut)));
    EXPECT_THROW(SafeTensorsFile::open((dir / "cut.safetensors").string()), Error) << "cut at " << cut;
  }
  EXPECT_GATI_ERROR(SafeTensorsFile::open((dir / "missing.safetensors").string()), "cannot open");
  std::filesystem::remove_all(dir);
}

TEST(SafeTensors, BadJson) {
  EXPECT_GATI_ERROR(parse(make_file("{\"a\": [1, 2", {})), "not valid JSON");
  EXPECT_GATI_ERROR(parse(make_file("[1,2,3]", {})), "must be a JSON object");
  EXPECT_GATI_ERROR(parse(make_file(R"({"a":{"dtype":"F32","shape":[2]}})", {})), "data_offsets");
  EXPECT_GATI_ERROR(parse(make_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", {})), "non-negative");
  EXPECT_GATI_ERROR(parse(make_file(R"({"__metadata__":{"k":1}})", {})), "must be a string");
}

TEST(SafeTensors, OffsetsOutsideData) {
  EXPECT_GATI_ERROR(
      parse(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", floats_bytes({1, 2}))),
      "outside the data section");
  EXPECT_GATI_ERROR(parse(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", floats_bytes({1, 2}))),
                    "reversed");
}

TEST(SafeTensors, OverlappingTensors) {
  const std::string h =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  EXPECT_GATI_ERROR(parse(make_file(h, floats_bytes({1, 2, 3}))), "overlap");
}

TEST(SafeTensors, HolesAndTrailingBytes) {
  EXPECT_GATI_ERROR(parse(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", floats_bytes({1, 2}))),
                    "unused bytes");
  EXPECT_GATI_ERROR(parse(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", floats_bytes({1, 2}))),
                    "after the last tensor");
}

TEST(SafeTensors, WrongDtype) {
  EXPECT_GATI_ERROR(parse(make_file(R"({"a":{"dtype":"F17","shape":[1],"data_offsets":[0,4]}})", floats_bytes({1}))),
                    "unknown dtype 'F17' (valid: F32");
  // Size that does not match the dtype.
  EXPECT_GATI_ERROR(parse(make_file(R"({"a":{"dtype":"F16","shape":[1],"data_offsets":[0,4]}})", floats_bytes({1}))),
                    "needs 2");
  // Integer tensors cannot be read as weights.
  const SafeTensorsFile f =
      parse(make_file(R"({"a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})", floats_bytes({1})));
  EXPECT_GATI_ERROR(f.read_float("a", {1}), "has dtype I32; expected F32, F16 or BF16");
}

TEST(SafeTensors, WrongShapeAndMissingTensor) {
  const SafeTensorsFile f = parse(make_file(kTwo, floats_bytes({1, 2, 3, 4, 5, 6, 7, 8})));
  EXPECT_GATI_ERROR(f.read_float("a", {3, 2}), "a: expected shape [3,2], file has [2,3]");
  EXPECT_GATI_ERROR(f.read_float("zz", {1}), "tensor 'zz' is missing");
  EXPECT_GATI_ERROR(f.metadata_at("gati.arch"), "metadata key 'gati.arch' is missing");
}

// Every single-byte corruption of a small valid file either parses or throws
// gati::Error: never a crash, never another exception type.
TEST(SafeTensors, ByteCorruptionNeverCrashes) {
  const std::vector<uint8_t> good = make_file(kTwo, floats_bytes({1, 2, 3, 4, 5, 6, 7, 8}));
  int rejected = 0;
  for (size_t i = 0; i < good.size(); ++i)
    for (uint8_t v : {uint8_t(0), uint8_t(0xff), uint8_t('9'), uint8_t('"')}) {
      std::vector<uint8_t> bad = good;
      if (bad[i] == v) continue;
      bad[i] = v;
      try {
        const SafeTensorsFile f = parse(bad);
        for (const auto& n : f.names()) (void)f.read_float(n, static_cast<std::vector<int64_t>*>(nullptr));
      } catch (const Error&) {
        ++rejected;
      }
    }
  EXPECT_GT(rejected, 100);
}

}  // namespace
}  // namespace gati
