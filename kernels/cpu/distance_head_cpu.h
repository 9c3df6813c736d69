// Freeze's approximate caches as an exit op on the CPU, and the oracle of
// their CUDA twin (kernels/exit_state.h, DistanceHeadView, states the math).
#pragma once

#include <cstdint>

#include "kernels/exit_state.h"

namespace gati::cpu {

// The k = min(h.neighbours, h.entries) nearest keys to the reduced query
// y[h.reduced], nearest first (squared distance, the lowest index on ties):
// indices into idx[k], squared distances into d2[k]; returns k.
int nearest_keys(const DistanceHeadView& h, const float* y, int32_t* idx, float* d2);

// Freeze's vote of those neighbours: the winning label and its confidence
// C / (1 + C).
int vote_neighbours(const DistanceHeadView& h, const int32_t* idx, const float* d2, int k, float* confidence);

// One row's answer from its pooled features [h.dim]: standardise, project,
// find the neighbours and vote.
int distance_head_predict(const DistanceHeadView& h, const float* pooled, float* confidence);

// For each of the n rows of act (NHWC [n, height, width, c], with
// h.dim == h.pool.features(c)): pool into pooled[n, h.dim], answer as
// distance_head_predict, and when the confidence reaches the threshold
// record (exit_id, label, confidence) for sample position[pos][row] and set
// hit[row] = 1 (else 0).  Rows run in parallel, each in a fixed order, so a
// sample's answer does not depend on its batch.
void exit_head_distance(const float* act, int n, int height, int width, int c, const DistanceHeadView& h, int exit_id,
                        const ExitState& st, int pos, float* pooled);
// The same from features already pooled: pooled[n, h.dim].
void exit_head_distance_pooled(const float* pooled, int n, const DistanceHeadView& h, int exit_id, const ExitState& st,
                               int pos);

}  // namespace gati::cpu
