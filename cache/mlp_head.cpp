// GATI's MLP predictor; see mlp_head.h.
#include "cache/mlp_head.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "kernels/cpu/exit_head_cpu.h"
#include "kernels/cpu/threads.h"
#include "kernels/cpu/vec16.h"
#include "weights/common/error.h"

namespace gati {
namespace {

// g[0, dim) += a * x[0, dim)
void axpy(float* g, float a, const float* x, int dim) {
  int d = 0;
  for (; d + 16 <= dim; d += 16) cpu::store16(g + d, cpu::load16(g + d) + a * cpu::load16(x + d));
  for (; d < dim; ++d) g[d] += a * x[d];
}

}  // namespace

void init_mlp(ExitHeadSpec& h, int hidden, uint32_t seed) {
  if (h.dim < 1 || h.classes < 1 || hidden < 1 || hidden > kMaxHidden)
    fail("exit '", h.name, "': an MLP predictor of ", hidden, " hidden units (valid: 1 to ", kMaxHidden, ") over ",
         h.dim, " features and ", h.classes, " classes");
  std::mt19937 rng(seed);
  auto fill = [&](std::vector<float>& v, size_t count, int inputs) {
    std::uniform_real_distribution<float> u(-1.f / std::sqrt(float(inputs)), 1.f / std::sqrt(float(inputs)));
    v.resize(count);
    for (float& x : v) x = u(rng);
  };
  h.hidden = hidden;
  fill(h.hidden_weight, size_t(hidden) * size_t(h.dim), h.dim);
  fill(h.hidden_bias, size_t(hidden), h.dim);
  fill(h.weight, size_t(h.classes) * size_t(hidden), hidden);
  fill(h.bias, size_t(h.classes), hidden);
}

cpu::SgdResult mlp_sgd_step(ExitHeadSpec& h, const float* x, const int* labels, int n, const SgdHyper& hp,
                            std::vector<float>& velocity, const cpu::Distill& distill) {
  cpu::SgdResult r;
  if (n <= 0) return r;
  const int D = h.dim, H = h.hidden, K = h.classes;
  if (H < 1) fail("exit '", h.name, "': mlp_sgd_step needs a hidden layer");
  for (int i = 0; i < n; ++i)
    if (labels[i] < 0 || labels[i] >= K) {
      r.status = OpStatus::kBadLabel;
      r.bad_index = i;
      return r;
    }
  const size_t w2 = size_t(K) * size_t(H), b2 = size_t(K), w1 = size_t(H) * size_t(D), b1 = size_t(H);
  const size_t total = w2 + b2 + w1 + b1;
  // A non-finite feature would make the hidden weights' gradient NaN
  // (relu hides it in the forward pass, the step would not): refused, naming
  // the first hidden weight it reaches.
  for (size_t i = 0; i < size_t(n) * size_t(D); ++i)
    if (!std::isfinite(x[i])) {
      r.status = OpStatus::kNonFinite;
      r.bad_index = long(w2 + b2 + i % size_t(D));
      return r;
    }
  if (velocity.size() != total) velocity.assign(total, 0.f);
  const bool soft = distill.teacher && distill.alpha > 0;
  const float alpha = soft ? distill.alpha : 0.f, T = distill.temperature;

  // Forward, per sample: standardised features, hidden units, d(loss)/dz.
  const size_t N = size_t(n);
  std::vector<float> xs(N * size_t(D)), u(N * size_t(H)), g(N * size_t(K)), du(N * size_t(H));
  std::vector<double> losses(N);
  const LinearHeadView view = host_linear_view(h);
  cpu::parallel_for(n, size_t(n) * size_t(D) * size_t(H) > 262144, [&](int i) {
    const size_t I = size_t(i);
    float* xi = xs.data() + I * size_t(D);
    float* ui = u.data() + I * size_t(H);
    for (int d = 0; d < D; ++d) xi[d] = (x[I * size_t(D) + size_t(d)] - h.mean[size_t(d)]) * h.inv_std[size_t(d)];
    for (int j = 0; j < H; ++j)
      ui[j] = hidden_relu(cpu::lane_dot(view.hidden_weight + size_t(j) * size_t(D), xi, D) + view.hidden_bias[j]);
    std::vector<float> z(static_cast<size_t>(K)), p(static_cast<size_t>(K)), zt, pt;
    for (int k = 0; k < K; ++k) z[size_t(k)] = cpu::lane_dot(view.weight + size_t(k) * size_t(H), ui, H) + view.bias[k];
    cpu::softmax(z.data(), K, p.data());
    double loss = -(1 - alpha) * std::log(std::max(p[size_t(labels[i])], 1e-12f));
    const float* q = soft ? distill.teacher + I * size_t(K) : nullptr;
    if (soft) {  // d/dz of T^2 KL(q || softmax(z / T)) is T (softmax(z / T) - q)
      zt.resize(size_t(K));
      pt.resize(size_t(K));
      for (int k = 0; k < K; ++k) zt[size_t(k)] = z[size_t(k)] / T;
      cpu::softmax(zt.data(), K, pt.data());
      for (int k = 0; k < K; ++k)
        if (q[k] > 0) loss += alpha * T * T * q[k] * std::log(q[k] / std::max(pt[size_t(k)], 1e-12f));
    }
    float* gi = g.data() + I * size_t(K);
    for (int k = 0; k < K; ++k) {
      gi[k] = (1 - alpha) * (p[size_t(k)] - (k == labels[i] ? 1.f : 0.f));
      if (soft) gi[k] += alpha * T * (pt[size_t(k)] - q[k]);
    }
    float* dui = du.data() + I * size_t(H);
    for (int j = 0; j < H; ++j) {
      float s = 0;
      if (ui[j] > 0.f)  // relu's gradient: 1 above 0
        for (int k = 0; k < K; ++k) s += gi[k] * view.weight[size_t(k) * size_t(H) + size_t(j)];
      dui[j] = s;
    }
    losses[I] = loss;
  });
  double loss = 0;
  for (double l : losses) loss += l;
  r.loss = loss / n;

  // Gradients in the parameters' order: score weights and biases, hidden
  // weights (rows split over threads) and biases.
  std::vector<float> grad(total, 0.f);
  float* gw2 = grad.data();
  float* gb2 = gw2 + w2;
  float* gw1 = gb2 + b2;
  float* gb1 = gw1 + w1;
  for (size_t i = 0; i < N; ++i)
    for (int k = 0; k < K; ++k) {
      const float gk = g[i * size_t(K) + size_t(k)];
      axpy(gw2 + size_t(k) * size_t(H), gk, u.data() + i * size_t(H), H);
      gb2[k] += gk;
    }
  cpu::parallel_for(H, size_t(n) * size_t(D) * size_t(H) > 262144, [&](int j) {
    for (size_t i = 0; i < N; ++i) {
      const float a = du[i * size_t(H) + size_t(j)];
      if (a == 0.f) continue;
      axpy(gw1 + size_t(j) * size_t(D), a, xs.data() + i * size_t(D), D);
      gb1[j] += a;
    }
  });

  // The step, aside; committed when every new value is finite and in range.
  float* params[4] = {h.weight.data(), h.bias.data(), h.hidden_weight.data(), h.hidden_bias.data()};
  const size_t sizes[4] = {w2, b2, w1, b1};
  std::vector<float> next(total), nv(total);
  size_t at = 0;
  for (int part = 0; part < 4; ++part) {
    const bool decays = part == 0 || part == 2;
    for (size_t j = 0; j < sizes[part]; ++j, ++at) {
      const float w = params[part][j];
      const float gj = grad[at] / float(n) + (decays ? hp.weight_decay * w : 0.f);
      nv[at] = hp.momentum * velocity[at] + gj;
      next[at] = w - hp.lr * nv[at];
      if (!std::isfinite(next[at]) || std::abs(next[at]) > hp.max_weight) {
        r.status = OpStatus::kNonFinite;
        r.bad_index = long(at);
        return r;  // nothing committed
      }
    }
  }
  std::copy(nv.begin(), nv.end(), velocity.begin());
  at = 0;
  for (int part = 0; part < 4; ++part) {
    std::copy_n(next.begin() + long(at), sizes[part], params[part]);
    at += sizes[part];
  }
  return r;
}

}  // namespace gati
