// SGD on a linear cache model; see linear_sgd_cpu.h.
#include "kernels/cpu/linear_sgd_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/exit_head_cpu.h"

namespace gati::cpu {

SgdResult linear_sgd_step(const LinearHeadMut& h, const float* x, const int* labels, int n, const SgdHyper& hp,
                          const Distill& distill) {
  SgdResult r;
  if (n <= 0) return r;
  const size_t wsize = size_t(h.classes) * size_t(h.dim), total = wsize + size_t(h.classes);
  for (int i = 0; i < n; ++i)
    if (labels[i] < 0 || labels[i] >= h.classes) {
      r.status = OpStatus::kBadLabel;
      r.bad_index = i;
      return r;
    }
  const bool soft = distill.teacher && distill.alpha > 0;
  const float alpha = soft ? distill.alpha : 0.f, T = distill.temperature;
  std::vector<float> grad(total, 0.f), z(size_t(h.classes)), p(size_t(h.classes)), zt(size_t(h.classes)),
      pt(size_t(h.classes)), xs(size_t(h.dim));
  const LinearHeadView view{h.dim, h.classes, h.mean, h.inv_std, h.weight, h.bias, 2.0f, {}};
  double loss = 0;
  for (int i = 0; i < n; ++i) {
    const float* xi = x + size_t(i) * size_t(h.dim);
    for (int d = 0; d < h.dim; ++d) xs[size_t(d)] = (xi[d] - h.mean[d]) * h.inv_std[d];
    linear_head_scores(view, xi, z.data());
    softmax(z.data(), h.classes, p.data());
    loss -= (1 - alpha) * std::log(std::max(p[size_t(labels[i])], 1e-12f));
    const float* q = soft ? distill.teacher + size_t(i) * size_t(h.classes) : nullptr;
    if (soft) {  // d/dz of T^2 KL(q || softmax(z / T)) is T (softmax(z / T) - q)
      for (int k = 0; k < h.classes; ++k) zt[size_t(k)] = z[size_t(k)] / T;
      softmax(zt.data(), h.classes, pt.data());
      for (int k = 0; k < h.classes; ++k)
        if (q[k] > 0) loss += alpha * T * T * q[k] * std::log(q[k] / std::max(pt[size_t(k)], 1e-12f));
    }
    for (int k = 0; k < h.classes; ++k) {
      float g = (1 - alpha) * (p[size_t(k)] - (k == labels[i] ? 1.f : 0.f));
      if (soft) g += alpha * T * (pt[size_t(k)] - q[k]);
      float* gw = grad.data() + size_t(k) * size_t(h.dim);
      for (int d = 0; d < h.dim; ++d) gw[d] += g * xs[size_t(d)];
      grad[wsize + size_t(k)] += g;
    }
  }
  r.loss = loss / n;
  std::vector<float> nv(total), nw(total);
  for (size_t j = 0; j < total; ++j) {
    const float w = j < wsize ? h.weight[j] : h.bias[j - wsize];
    const float g = grad[j] / float(n) + (j < wsize ? hp.weight_decay * w : 0.f);
    nv[j] = hp.momentum * h.velocity[j] + g;
    nw[j] = w - hp.lr * nv[j];
    if (!std::isfinite(nw[j]) || std::abs(nw[j]) > hp.max_weight) {
      r.status = OpStatus::kNonFinite;
      r.bad_index = long(j);
      return r;  // nothing committed
    }
  }
  std::copy(nv.begin(), nv.end(), h.velocity);
  std::copy(nw.begin(), nw.begin() + long(wsize), h.weight);
  std::copy(nw.begin() + long(wsize), nw.end(), h.bias);
  return r;
}

}  // namespace gati::cpu
