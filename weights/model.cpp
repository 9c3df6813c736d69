// Model loading: metadata -> architecture -> expected tensors -> folded weights.
#include "weights/model.h"

#include <cstdint>
#include <cstdio>
#include <cstring>

#include <cmath>
#include <set>

#include "weights/common/checked.h"
#include "weights/common/error.h"
#include "weights/safetensors.h"

namespace gati {
namespace {

void check_finite(const std::vector<float>& v, const std::string& path, const std::string& name) {
  const size_t i = first_non_finite(v.data(), v.size());
  if (i < v.size()) fail(path, ": ", name, ": value ", i, " is ", v[i], " (weights must be finite)");
}

}  // namespace

ConvWeights fold_batch_norm(const std::vector<float>& weight, int cout, const std::vector<float>& gamma,
                            const std::vector<float>& beta, const std::vector<float>& mean,
                            const std::vector<float>& var, double eps) {
  ConvWeights out;
  out.weight.resize(weight.size());
  out.bias.resize(size_t(cout));
  const size_t per_out = weight.size() / size_t(cout);
  for (int o = 0; o < cout; ++o) {
    if (var[size_t(o)] < 0) fail("batch norm: running_var[", o, "] = ", var[size_t(o)], " is negative");
    const double scale = double(gamma[size_t(o)]) / std::sqrt(double(var[size_t(o)]) + eps);
    for (size_t i = 0; i < per_out; ++i) {
      const float v = float(double(weight[size_t(o) * per_out + i]) * scale);
      if (!std::isfinite(v))
        fail("batch norm: folding channel ", o, " (gamma ", gamma[size_t(o)], ", running_var ", var[size_t(o)],
             ") overflows weight ", i, " to ", v);
      out.weight[size_t(o) * per_out + i] = v;
    }
    out.bias[size_t(o)] = float(double(beta[size_t(o)]) - double(mean[size_t(o)]) * scale);
    if (!std::isfinite(out.bias[size_t(o)]))
      fail("batch norm: folding channel ", o, " (running_mean ", mean[size_t(o)], ", running_var ", var[size_t(o)],
           ") overflows the bias to ", out.bias[size_t(o)]);
  }
  return out;
}

namespace {

// Mixes 32-bit words into a 64-bit state (a multiply-xorshift in the style
// of splitmix64): order-sensitive, every bit of every word matters.
struct Fingerprint {
  uint64_t h = 0x9e3779b97f4a7c15ull;
  void add(uint64_t w) {
    h ^= w + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
    h ^= h >> 31;
  }
  void add(const std::vector<float>& v) {
    add(v.size());
    for (float x : v) {
      uint32_t bits;
      std::memcpy(&bits, &x, sizeof bits);
      add(bits);
    }
  }
};

}  // namespace

std::string fingerprint(const Model& m) {
  Fingerprint f;
  for (char ch : m.arch().to_json()) f.add(uint64_t(static_cast<unsigned char>(ch)));
  for (const ConvWeights& c : m.convs) {
    f.add(c.weight);
    f.add(c.bias);
  }
  f.add(m.fc_weight);
  f.add(m.fc_bias);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(f.h));
  return hex;
}

Model load_model(const std::string& path) {
  const SafeTensorsFile file = SafeTensorsFile::open(path);
  Model m;
  m.path = path;
  Arch arch;
  try {
    arch = Arch::from_json(file.metadata_at("gati.arch"));
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
  m.net = describe(arch);
  std::set<std::string> used;
  auto read = [&](const std::string& name, const std::vector<int64_t>& shape) {
    std::vector<float> v = file.read_float(name, shape);
    check_finite(v, path, name);
    used.insert(name);
    m.parameters += int64_t(v.size());
    return v;
  };
  for (const ConvSpec& c : m.net.convs) {
    const std::vector<int64_t> wshape = {c.cout, c.cin / c.groups, c.kernel, c.kernel};
    const std::vector<int64_t> vshape = {c.cout};
    std::vector<float> w = read(c.name + ".weight", wshape);
    std::vector<float> gamma = read(c.bn + ".weight", vshape);
    std::vector<float> beta = read(c.bn + ".bias", vshape);
    std::vector<float> mean = read(c.bn + ".running_mean", vshape);
    std::vector<float> var = read(c.bn + ".running_var", vshape);
    try {
      m.convs.push_back(fold_batch_norm(w, c.cout, gamma, beta, mean, var, arch.bn_eps));
    } catch (const Error& e) {
      fail(path, ": ", c.bn, ": ", e.what());
    }
  }
  m.fc_weight = read("fc.weight", {arch.num_classes, m.net.features});
  m.fc_bias = read("fc.bias", {arch.num_classes});
  std::vector<std::string> unexpected;
  for (const std::string& name : file.names()) {
    const bool bookkeeping = name.size() > 19 && name.compare(name.size() - 19, 19, "num_batches_tracked") == 0;
    if (!used.count(name) && !bookkeeping) unexpected.push_back(name);
  }
  if (!unexpected.empty()) {
    std::string list;
    for (size_t i = 0; i < unexpected.size() && i < 5; ++i) list += (i ? ", " : "") + unexpected[i];
    fail(path, ": ", unexpected.size(), " tensor(s) that architecture '", arch.name, "' does not use: ", list,
         unexpected.size() > 5 ? ", ..." : "", " (wrong architecture in the metadata?)");
  }
  return m;
}

}  // namespace gati
