// Freeze's approximate caches as the fused exit kernel on the GPU, twin of
// kernels/cpu/distance_head_cpu.h (which, with DistanceHeadView, states the
// math).  It only enqueues on `stream`; decisions land in the exit state.
#pragma once

#include <cuda_runtime.h>

#include "kernels/exit_state.h"

namespace gati::cuda {

// One launch: pool each row of act (n, height, width, channels, in `layout`) as h.pool
// says into pooled [n, h.dim] (device), standardise, project, find the
// h.neighbours nearest keys, vote, and decide (hit[row]; exit, label,
// confidence of sample position[pos][row]).
void exit_head_distance(const void* act, int n, int height, int width, int channels, Layout layout, Precision precision,
                        const DistanceHeadView& h, int exit_id, const ExitState& st, int pos, float* pooled,
                        cudaStream_t stream);

}  // namespace gati::cuda
