// The memory of recent answers on the CPU, and the oracle of its CUDA twin:
// the lookup at its exit point and the insertion of the full model's
// confident answers after a run (kernels/exit_state.h, MemoryView).
#pragma once

#include "kernels/exit_state.h"

namespace gati::cpu {

// Squared Euclidean distance between two rows of `dim` floats, in 16 lanes
// summed in a fixed order (the same value whatever the batch).
float squared_distance(const float* a, const float* b, int dim);

// The nearest of `entries` keys [entries, dim] to q (the lowest index on
// ties) and its squared distance in *dist; -1 when there are none.
int nearest_entry(const float* q, const float* keys, int entries, int dim, float* dist);

// For each of the n rows of act (NHWC [n, height, width, c], with
// m.dim == m.pool.features(c)): pool into pooled[n, m.dim], standardise into
// m.pending[sample], find the nearest of the m.fill[0] entries, and when it
// lies within m.threshold record (exit_id, its label, its confidence,
// kByMemory) for sample position[pos][row] and set hit[row] = 1 (else 0).
void memory_lookup(const float* act, int n, int height, int width, int c, const MemoryView& m, int exit_id,
                   const ExitState& st, int pos, float* pooled);
// The same from features already pooled: pooled[n, m.dim].
void memory_lookup_pooled(const float* pooled, int n, const MemoryView& m, int exit_id, const ExitState& st, int pos);

// After a run of n samples: each sample the full model answered with
// confidence >= m.min_confidence, in sample order, becomes an entry (its
// pending features, label and confidence) in the next slot, round-robin.
void memory_insert(const MemoryView& m, const ExitState& st, int n);

}  // namespace gati::cpu
