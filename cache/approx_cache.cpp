// Approximate caches (Freeze); see approx_cache.h.
#include "cache/approx_cache.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>

#include "kernels/cpu/exit_head_cpu.h"
#include "kernels/cpu/gemm_cpu.h"
#include "kernels/cpu/memory_cpu.h"
#include "kernels/cpu/threads.h"
#include "weights/common/error.h"

namespace gati {
namespace {

// c [m, n] = a [m, k] x b [k, n], all row-major, on the CPU backend's GEMM.
std::vector<float> matmul(const float* a, int m, int k, const float* b, int n) {
  std::vector<float> c(size_t(m) * size_t(n));
  if (m == 0) return c;
  const cpu::PackedB packed = cpu::pack_b(b, k, n, n);
  cpu::gemm(m, a, k, packed, c.data(), n, {});
  return c;
}

// Orthonormalises the columns of z [rows, cols] (modified Gram-Schmidt,
// twice); a column that vanishes is replaced by a random direction.
void orthonormalise_columns(std::vector<float>& z, int rows, int cols, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  auto col = [&](int j, int i) -> float& { return z[size_t(i) * size_t(cols) + size_t(j)]; };
  for (int j = 0; j < cols; ++j) {
    for (int attempt = 0; attempt < 4; ++attempt) {
      for (int pass = 0; pass < 2; ++pass)
        for (int q = 0; q < j; ++q) {
          double dot = 0;
          for (int i = 0; i < rows; ++i) dot += double(col(q, i)) * col(j, i);
          for (int i = 0; i < rows; ++i) col(j, i) -= float(dot) * col(q, i);
        }
      double norm = 0;
      for (int i = 0; i < rows; ++i) norm += double(col(j, i)) * col(j, i);
      if (norm > 1e-20) {
        const float inv = float(1.0 / std::sqrt(norm));
        for (int i = 0; i < rows; ++i) col(j, i) *= inv;
        break;
      }
      for (int i = 0; i < rows; ++i) col(j, i) = normal(rng);
    }
  }
}

// A random subset of `want` of [0, n) in increasing order (all of them when
// want is 0 or >= n).
std::vector<size_t> subset(size_t n, size_t want, std::mt19937& rng) {
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), size_t(0));
  if (want == 0 || want >= n) return idx;
  std::shuffle(idx.begin(), idx.end(), rng);
  idx.resize(want);
  std::sort(idx.begin(), idx.end());
  return idx;
}

}  // namespace

std::vector<float> fit_projection(const float* x, size_t n, int dim, int reduced, uint32_t seed) {
  if (n == 0 || dim < 1 || reduced < 1 || reduced > dim)
    fail("PCA: ", n, " samples of dim ", dim, " into ", reduced, " dimensions (need samples and 1 <= reduced <= dim)");
  std::mt19937 rng(seed);
  const std::vector<size_t> rows = subset(n, 8192, rng);
  const int s = int(rows.size());
  std::vector<float> xs(size_t(s) * size_t(dim)), xt(size_t(dim) * size_t(s));
  for (int i = 0; i < s; ++i)
    for (int d = 0; d < dim; ++d) {
      const float v = x[rows[size_t(i)] * size_t(dim) + size_t(d)];
      xs[size_t(i) * size_t(dim) + size_t(d)] = v;
      xt[size_t(d) * size_t(s) + size_t(i)] = v;
    }
  // z [dim, reduced]: random, then z <- orth(X^T X z).
  std::normal_distribution<float> normal;
  std::vector<float> z(size_t(dim) * size_t(reduced));
  for (float& v : z) v = normal(rng);
  orthonormalise_columns(z, dim, reduced, rng);
  for (int it = 0; it < 6; ++it) {
    const std::vector<float> y = matmul(xs.data(), s, dim, z.data(), reduced);  // [s, reduced]
    z = matmul(xt.data(), dim, s, y.data(), reduced);                           // [dim, reduced]
    orthonormalise_columns(z, dim, reduced, rng);
  }
  std::vector<float> p(size_t(reduced) * size_t(dim));  // rows: the basis vectors
  for (int d = 0; d < dim; ++d)
    for (int r = 0; r < reduced; ++r)
      p[size_t(r) * size_t(dim) + size_t(d)] = z[size_t(d) * size_t(reduced) + size_t(r)];
  return p;
}

std::vector<float> kmeans(const float* points, size_t n, int r, int k_in, int iterations, uint32_t seed,
                          std::vector<int>* assign) {
  if (n == 0 || r < 1 || k_in < 1 || iterations < 1)
    fail("k-means: ", n, " points of dim ", r, " into ", k_in, " clusters with ", iterations,
         " iterations (need points, clusters and iterations)");
  const int k = int(std::min<size_t>(size_t(k_in), n));
  const size_t R = size_t(r);
  std::mt19937 rng(seed);
  auto d2 = [&](const float* a, const float* b) { return cpu::squared_distance(a, b, r); };
  // k-means++ seeding.
  std::vector<float> cent(size_t(k) * R);
  std::vector<float> nearest(n, std::numeric_limits<float>::max());
  size_t first = std::uniform_int_distribution<size_t>(0, n - 1)(rng);
  std::copy_n(points + first * R, R, cent.data());
  for (int c = 1; c < k; ++c) {
    double total = 0;
    const float* prev = cent.data() + size_t(c - 1) * R;
    for (size_t i = 0; i < n; ++i) {
      nearest[i] = std::min(nearest[i], d2(points + i * R, prev));
      total += nearest[i];
    }
    double pick = std::uniform_real_distribution<double>(0, total)(rng);
    size_t chosen = n - 1;
    for (size_t i = 0; i < n; ++i) {
      pick -= nearest[i];
      if (pick <= 0) {
        chosen = i;
        break;
      }
    }
    std::copy_n(points + chosen * R, R, cent.data() + size_t(c) * R);
  }
  // Lloyd: assignment by ||c||^2 - 2 x.c through the GEMM, then the means.
  assign->assign(n, 0);
  std::vector<float> best_d(n);
  for (int it = 0; it < iterations; ++it) {
    std::vector<float> ct(R * size_t(k));
    std::vector<float> cnorm(size_t(k), 0.f);
    for (int c = 0; c < k; ++c)
      for (size_t j = 0; j < R; ++j) {
        const float v = cent[size_t(c) * R + j];
        ct[j * size_t(k) + size_t(c)] = v;
        cnorm[size_t(c)] += v * v;
      }
    const std::vector<float> dots = matmul(points, int(n), r, ct.data(), k);  // [n, k]
    cpu::parallel_for(int(n), n * size_t(k) > 262144, [&](int i) {
      const float* row = dots.data() + size_t(i) * size_t(k);
      int b = 0;
      float bd = cnorm[0] - 2 * row[0];
      for (int c = 1; c < k; ++c) {
        const float d = cnorm[size_t(c)] - 2 * row[c];
        if (d < bd) {
          bd = d;
          b = c;
        }
      }
      (*assign)[size_t(i)] = b;
      best_d[size_t(i)] = d2(points + size_t(i) * R, cent.data() + size_t(b) * R);
    });
    std::vector<double> sum(size_t(k) * R, 0.0);
    std::vector<size_t> count(size_t(k), 0);
    for (size_t i = 0; i < n; ++i) {
      const size_t c = size_t((*assign)[i]);
      ++count[c];
      for (size_t j = 0; j < R; ++j) sum[c * R + j] += points[i * R + j];
    }
    for (int c = 0; c < k; ++c) {
      if (count[size_t(c)] == 0) {
        // Reseed an empty cluster at the point farthest from its centroid.
        const size_t far = size_t(std::max_element(best_d.begin(), best_d.end()) - best_d.begin());
        std::copy_n(points + far * R, R, cent.data() + size_t(c) * R);
        best_d[far] = 0;
        continue;
      }
      for (size_t j = 0; j < R; ++j) cent[size_t(c) * R + j] = float(sum[size_t(c) * R + j] / double(count[size_t(c)]));
    }
  }
  return cent;
}

void build_approx_cache(ExitCache& c, const std::vector<float>& features, const std::vector<int>& labels,
                        const ApproxOptions& o) {
  const size_t n = labels.size(), D = size_t(c.dim);
  if (n == 0) fail("cache ", c.name, ": no training samples");
  if (features.size() != n * D)
    fail("cache ", c.name, ": ", features.size(), " feature values for ", n, " samples of dim ", c.dim);
  if (o.kind == HeadKind::kLinear) fail("cache ", c.name, ": build_approx_cache builds knn or kmeans caches");
  if (o.reduced < 1) fail("cache ", c.name, ": --reduced ", o.reduced, " must be at least 1");
  if (o.neighbours < 1 || o.neighbours > kMaxNeighbours)
    fail("cache ", c.name, ": --neighbours ", o.neighbours, " (valid: 1 to ", kMaxNeighbours, ")");
  if (o.kind == HeadKind::kKmeans && o.centroids < 1)
    fail("cache ", c.name, ": --centroids ", o.centroids, " must be at least 1");
  for (int y : labels)
    if (y < 0 || y >= c.classes) fail("cache ", c.name, ": label ", y, " is not one of ", c.classes, " classes");
  c.kind = o.kind;
  c.reduced = std::min(o.reduced, c.dim);
  c.weight.clear();
  c.bias.clear();
  c.threshold = 2.0f;
  fit_standardisation(features.data(), n, c.dim, nullptr, &c.mean, &c.inv_std);
  std::mt19937 rng(o.seed);
  const std::vector<size_t> rows = subset(n, size_t(o.kind == HeadKind::kKnn ? o.knn_entries : o.kmeans_samples), rng);
  const size_t m = rows.size();
  std::vector<float> xs(m * D);
  for (size_t i = 0; i < m; ++i)
    for (size_t d = 0; d < D; ++d) xs[i * D + d] = (features[rows[i] * D + d] - c.mean[d]) * c.inv_std[d];
  c.projection = fit_projection(xs.data(), m, c.dim, c.reduced, o.seed + 1);
  // The reduced samples [m, reduced] = xs P^T, with the runtime's own
  // arithmetic (lane_dot), so a training image looked up finds itself at 0.
  std::vector<float> y(m * size_t(c.reduced));
  cpu::parallel_for(int(m), true, [&](int i) {
    for (int r = 0; r < c.reduced; ++r)
      y[size_t(i) * size_t(c.reduced) + size_t(r)] =
          cpu::lane_dot(c.projection.data() + size_t(r) * D, xs.data() + size_t(i) * D, c.dim);
  });
  if (o.kind == HeadKind::kKnn) {
    c.neighbours = o.neighbours;
    c.keys = std::move(y);
    c.labels.resize(m);
    for (size_t i = 0; i < m; ++i) c.labels[i] = int32_t(labels[rows[i]]);
    c.share.assign(m, 1.f);
    return;
  }
  std::vector<int> assign;
  c.keys = kmeans(y.data(), m, c.reduced, o.centroids, o.iterations, o.seed + 2, &assign);
  const size_t k = c.keys.size() / size_t(c.reduced);
  std::vector<std::vector<int>> votes(k, std::vector<int>(size_t(c.classes), 0));
  for (size_t i = 0; i < m; ++i) ++votes[size_t(assign[i])][size_t(labels[rows[i]])];
  // Each centroid's majority label and its share; a centroid nobody chose
  // in the last assignment (reseeded) is dropped.
  std::vector<float> keys;
  c.labels.clear();
  c.share.clear();
  for (size_t j = 0; j < k; ++j) {
    const auto& v = votes[j];
    const int total = std::accumulate(v.begin(), v.end(), 0);
    if (total == 0) continue;
    const int label = int(std::max_element(v.begin(), v.end()) - v.begin());
    keys.insert(keys.end(), c.keys.begin() + long(j * size_t(c.reduced)),
                c.keys.begin() + long((j + 1) * size_t(c.reduced)));
    c.labels.push_back(label);
    c.share.push_back(float(v[size_t(label)]) / float(total));
  }
  c.keys = std::move(keys);
  c.neighbours = 1;
}

}  // namespace gati
