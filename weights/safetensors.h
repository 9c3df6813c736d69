// Reader and writer for the safetensors format.
//
// Layout: u64 little-endian header length N, N bytes of JSON header
// ({name: {dtype, shape, data_offsets:[begin,end]}, "__metadata__": {str:str}}),
// then the tensor bytes.  The reader reads the file once into memory and
// validates everything before any tensor is handed out: header length, JSON,
// dtypes, shapes, offsets inside the data, overlaps, holes and trailing bytes,
// so a damaged file fails at open() with its path and the offending tensor.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace gati {

enum class DType { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };

const char* dtype_name(DType t);
size_t dtype_size(DType t);
std::string shape_str(const std::vector<int64_t>& shape);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets into the data section
  uint64_t end = 0;
  int64_t numel() const;
};

class SafeTensorsFile {
 public:
  // Reads and validates the file; throws gati::Error naming the path and the problem.
  static SafeTensorsFile open(const std::string& path);
  // The same from bytes already in memory; `origin` names them in errors.
  static SafeTensorsFile from_bytes(std::vector<uint8_t> bytes, const std::string& origin);

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Metadata value or throws naming the missing key.
  const std::string& metadata_at(const std::string& key) const;
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;

  // Tensor as float32 (F32, F16 and BF16 convert), checked against the
  // expected shape; throws "NAME: expected shape [..], file has [..]".
  std::vector<float> read_float(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  // An I32 tensor of exactly this shape (other dtypes are refused).
  std::vector<int32_t> read_int32(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  // Tensor as float32 whatever its shape (shape returned in *shape).
  std::vector<float> read_float(const std::string& name, std::vector<int64_t>* shape) const;
  // Raw bytes of a tensor.
  const uint8_t* raw(const std::string& name) const;

 private:
  std::string path_;
  std::vector<uint8_t> bytes_;
  size_t data_base_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

class SafeTensorsWriter {
 public:
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data);
  void add_float(const std::string& name, const std::vector<int64_t>& shape, const std::vector<float>& data);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  // Writes atomically (temporary file + rename); throws on I/O errors.
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// bfloat16 to float (IEEE halves: weights/common/half.h).
float bf16_to_float(uint16_t b);

}  // namespace gati
