// Approximate caches (Freeze Inference): at each exit point, stored keys
// (pooled features of training images, or k-means centroids of them) with
// the full model's label, answered by distance.  The runtime's distance head
// (kernels/exit_state.h, DistanceHeadView) states the lookup and confidence;
// this builds the keys.
//
// Design decision: Freeze shrinks each layer's output with a learned
// dimension-reduction network; here the output is pooled as the exit's
// PoolSpec says (the same pooling the learned caches use), standardised,
// and projected onto its top principal subspace (PCA by subspace iteration
// on a sample), so a lookup costs dim x reduced MACs for the projection and
// entries x reduced for the distances.  Distances are invariant to the basis
// within the subspace, so the basis is any orthonormal one of it.
#pragma once

#include <cstdint>
#include <vector>

#include "cache/learned_cache.h"

namespace gati {

struct ApproxOptions {
  HeadKind kind = HeadKind::kKnn;
  int reduced = 64;            // PCA dimensions (capped at the features' dim)
  int knn_entries = 10000;     // k-NN: training samples kept as keys, a random subset (0: every one, as Freeze)
  int neighbours = 10;         // k-NN: the k that vote (k-means votes with the nearest centroid)
  int centroids = 1024;        // k-means: clusters
  int kmeans_samples = 20000;  // k-means: training samples clustered, a random subset (0: every one)
  int iterations = 15;         // k-means: Lloyd iterations
  uint32_t seed = 0;
};

// An orthonormal basis [reduced, dim] (rows) of the top principal subspace
// of the rows of x [n, dim] (already centred), by subspace iteration on at
// most 8192 of them.
std::vector<float> fit_projection(const float* x, size_t n, int dim, int reduced, uint32_t seed);

// Lloyd's k-means of the rows of points [n, r] into `k` centroids (k-means++
// seeding): returns the centroids [k', r] (k' = min(k, n); empty clusters
// are reseeded from the farthest point) and each point's cluster in assign.
std::vector<float> kmeans(const float* points, size_t n, int r, int k, int iterations, uint32_t seed,
                          std::vector<int>* assign);

// Makes `cache` (exit, name, pool, dim and classes set) a Freeze cache of
// options.kind from the training features [n, dim] and the full model's
// labels: standardisation, projection and keys.  The threshold is left
// closed for calibration.
void build_approx_cache(ExitCache& cache, const std::vector<float>& features, const std::vector<int>& labels,
                        const ApproxOptions& options);

}  // namespace gati
