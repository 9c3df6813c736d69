// The two small ops of on-device online learning (engine/learner.h) besides
// the SGD step (linear_sgd.cuh), on the GPU: the twins of
// kernels/cpu/learn_cpu.h, with the same contracts, bit for bit.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/exit_state.h"

namespace gati::cuda {

// Rows g.row[i] of features [*, dim] (device) become rows offset + i of x,
// and g.label[i] label offset + i of y (device), for i < g.count.  The list
// travels as the kernel's parameter: the host may reuse it on return.
void gather_rows(const float* features, int dim, const RowGather& g, float* x, int32_t* y, int offset,
                 cudaStream_t stream);

// Weights [classes * dim] rounded to halves as the host rounds them
// (half_bits_of), into served_w as floats and served_f16 as halves; the
// bias copied.
void publish_linear(const float* weight, const float* bias, int dim, int classes, float* served_w, uint16_t* served_f16,
                    float* served_b, cudaStream_t stream);

}  // namespace gati::cuda
