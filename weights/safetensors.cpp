// safetensors reader/writer; see safetensors.h for the format and what is validated.
#include "weights/safetensors.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string_view>

#include "weights/common/error.h"
#include "weights/common/file_write.h"
#include "weights/common/half.h"
#include "weights/common/json_read.h"

namespace gati {
namespace {

// A header above this is not a weights file but a damaged length field.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DTypeEntry {
  const char* name;
  DType type;
  size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {"F32", DType::F32, 4}, {"F16", DType::F16, 2},   {"BF16", DType::BF16, 2}, {"F64", DType::F64, 8},
    {"I64", DType::I64, 8}, {"I32", DType::I32, 4},   {"I16", DType::I16, 2},   {"I8", DType::I8, 1},
    {"U8", DType::U8, 1},   {"BOOL", DType::BOOL, 1},
};

DType parse_dtype(const std::string& s, const std::string& where) {
  for (const auto& e : kDTypes)
    if (s == e.name) return e.type;
  std::string valid;
  for (const auto& e : kDTypes) valid += std::string(valid.empty() ? "" : ", ") + e.name;
  fail(where, ": unknown dtype '", s, "' (valid: ", valid, ")");
}

}  // namespace

const char* dtype_name(DType t) {
  for (const auto& e : kDTypes)
    if (e.type == t) return e.name;
  return "?";
}

size_t dtype_size(DType t) {
  for (const auto& e : kDTypes)
    if (e.type == t) return e.size;
  return 0;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

float bf16_to_float(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

SafeTensorsFile SafeTensorsFile::open(const std::string& path) {
  require_regular_file(path, "safetensors");
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) fail(path, ": cannot open (", std::strerror(errno), ")");
  const std::streamsize size = in.tellg();
  if (size < 0) fail(path, ": cannot read its size");
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  in.seekg(0);
  if (size > 0 && !in.read(reinterpret_cast<char*>(bytes.data()), size)) fail(path, ": read failed");
  return from_bytes(std::move(bytes), path);
}

SafeTensorsFile SafeTensorsFile::from_bytes(std::vector<uint8_t> bytes, const std::string& origin) {
  SafeTensorsFile f;
  f.path_ = origin;
  f.bytes_ = std::move(bytes);
  const uint64_t size = f.bytes_.size();
  if (size < 8) fail(origin, ": not a safetensors file (", size, " bytes, shorter than the 8-byte header length)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | f.bytes_[i];
  if (header_len > kMaxHeaderBytes)
    fail(origin, ": header length ", header_len, " is implausible (limit ", kMaxHeaderBytes, "); file damaged?");
  if (8 + header_len > size)
    fail(origin, ": header length ", header_len, " runs past the end of the file (", size, " bytes); truncated?");
  f.data_base_ = 8 + header_len;
  const uint64_t data_size = size - f.data_base_;

  const nlohmann::json header = json_parse(
      std::string_view(reinterpret_cast<const char*>(f.bytes_.data()) + 8, size_t(header_len)), origin + ": header");
  if (!header.is_object()) fail(origin, ": header must be a JSON object");

  std::vector<const TensorInfo*> by_offset;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(origin, ": __metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail(origin, ": __metadata__.", m.key(), " must be a string");
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = origin + ": tensor '" + name + "'";
    if (!v.is_object()) fail(where, ": entry must be an object");
    if (!v.contains("dtype") || !v["dtype"].is_string()) fail(where, ": missing or non-string 'dtype'");
    if (!v.contains("shape") || !v["shape"].is_array()) fail(where, ": missing or non-array 'shape'");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      fail(where, ": 'data_offsets' must be [begin, end]");
    TensorInfo info;
    info.name = name;
    info.dtype = parse_dtype(v["dtype"].get<std::string>(), where);
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) fail(where, ": shape entries must be non-negative integers");
      const int64_t dim = d.get<int64_t>();
      info.shape.push_back(dim);
      if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / 16 / uint64_t(dim))
        fail(where, ": shape ", shape_str(info.shape), " is too large");
      numel *= uint64_t(dim);
    }
    for (const auto& o : v["data_offsets"])
      if (!o.is_number_unsigned()) fail(where, ": data_offsets must be non-negative integers");
    info.begin = v["data_offsets"][0].get<uint64_t>();
    info.end = v["data_offsets"][1].get<uint64_t>();
    if (info.begin > info.end) fail(where, ": data_offsets [", info.begin, ",", info.end, "] are reversed");
    if (info.end > data_size)
      fail(where, ": data_offsets [", info.begin, ",", info.end, "] lie outside the data section (", data_size,
           " bytes); truncated?");
    const uint64_t expected = numel * dtype_size(info.dtype);
    if (info.end - info.begin != expected)
      fail(where, ": ", info.end - info.begin, " bytes of data, but ", dtype_name(info.dtype), " ",
           shape_str(info.shape), " needs ", expected);
    f.tensors_.emplace(name, std::move(info));
  }
  for (const auto& [name, info] : f.tensors_) by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo* t : by_offset) {
    if (t->begin == t->end) continue;  // empty tensors occupy nothing
    if (t->begin < covered)
      fail(origin, ": tensors '", prev->name, "' and '", t->name, "' overlap (", prev->name, " ends at ", covered, ", ",
           t->name, " begins at ", t->begin, ")");
    if (t->begin > covered)
      fail(origin, ": ", t->begin - covered, " unused bytes before tensor '", t->name, "' at data offset ", covered);
    covered = t->end;
    prev = t;
  }
  if (covered != data_size)
    fail(origin, ": ", data_size - covered, " bytes after the last tensor are not described by the header");
  return f;
}

const std::string& SafeTensorsFile::metadata_at(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) fail(path_, ": metadata key '", key, "' is missing");
  return it->second;
}

std::vector<std::string> SafeTensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [name, info] : tensors_) out.push_back(name);
  return out;
}

const TensorInfo& SafeTensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(path_, ": tensor '", name, "' is missing");
  return it->second;
}

const uint8_t* SafeTensorsFile::raw(const std::string& name) const {
  return bytes_.data() + data_base_ + info(name).begin;
}

std::vector<float> SafeTensorsFile::read_float(const std::string& name, std::vector<int64_t>* shape) const {
  const TensorInfo& t = info(name);
  if (shape) *shape = t.shape;
  const int64_t n = t.numel();
  std::vector<float> out(static_cast<size_t>(n));
  const uint8_t* p = raw(name);
  switch (t.dtype) {
    case DType::F32:
      if (n) std::memcpy(out.data(), p, size_t(n) * 4);
      break;
    case DType::F16:
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[size_t(i)] = t.dtype == DType::F16 ? half_to_float(h) : bf16_to_float(h);
      }
      break;
    default:
      fail(path_, ": tensor '", name, "' has dtype ", dtype_name(t.dtype), "; expected F32, F16 or BF16");
  }
  return out;
}

std::vector<float> SafeTensorsFile::read_float(const std::string& name, const std::vector<int64_t>& expected) const {
  const TensorInfo& t = info(name);
  if (t.shape != expected)
    fail(path_, ": ", name, ": expected shape ", shape_str(expected), ", file has ", shape_str(t.shape));
  return read_float(name, static_cast<std::vector<int64_t>*>(nullptr));
}

std::vector<int32_t> SafeTensorsFile::read_int32(const std::string& name, const std::vector<int64_t>& expected) const {
  const TensorInfo& t = info(name);
  if (t.dtype != DType::I32) fail(path_, ": ", name, ": expected dtype I32, file has ", dtype_name(t.dtype));
  if (t.shape != expected)
    fail(path_, ": ", name, ": expected shape ", shape_str(expected), ", file has ", shape_str(t.shape));
  std::vector<int32_t> out(size_t(t.numel()));
  if (!out.empty()) std::memcpy(out.data(), raw(name), out.size() * sizeof(int32_t));
  return out;
}

void SafeTensorsWriter::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data) {
  if (name == "__metadata__") fail("safetensors writer: '__metadata__' is reserved");
  for (const auto& e : entries_)
    if (e.name == name) fail("safetensors writer: tensor '", name, "' added twice");
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail("safetensors writer: tensor '", name, "' has a negative dimension");
    n *= d;
  }
  Entry e{name, dtype, shape, {}};
  e.bytes.resize(size_t(n) * dtype_size(dtype));
  if (!e.bytes.empty()) std::memcpy(e.bytes.data(), data, e.bytes.size());
  entries_.push_back(std::move(e));
}

void SafeTensorsWriter::add_float(const std::string& name, const std::vector<int64_t>& shape,
                                  const std::vector<float>& data) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (n != int64_t(data.size()))
    fail("safetensors writer: tensor '", name, "': shape ", shape_str(shape), " holds ", n, " values, given ",
         data.size());
  add(name, DType::F32, shape, data.data());
}

void SafeTensorsWriter::write(const std::string& path) const {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const auto& e : entries_) {
    header[e.name] = {
        {"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.bytes.size()}}};
    offset += e.bytes.size();
  }
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  write_file_atomically(path, [&](std::ostream& out) {
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(text.size()) >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), std::streamsize(text.size()));
    for (const auto& e : entries_)
      out.write(reinterpret_cast<const char*>(e.bytes.data()), std::streamsize(e.bytes.size()));
  });
}

}  // namespace gati
