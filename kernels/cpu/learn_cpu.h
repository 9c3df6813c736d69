// The two small ops of on-device online learning (engine/learner.h) besides
// the SGD step itself, on the CPU, and the oracle of their CUDA twins:
// gathering the pooled features of requests the full model answered into a
// head's next SGD batch, and publishing a head's learned weights to the copy
// that runs read.
#pragma once

#include <cstdint>

#include "kernels/exit_state.h"

namespace gati::cpu {

// Rows g.row[i] of features [*, dim] become rows offset + i of x [*, dim],
// and g.label[i] label offset + i of y, for i < g.count.
void gather_rows(const float* features, int dim, const RowGather& g, float* x, int32_t* y, int offset);

// The served copy of a learned linear head: each weight [classes * dim]
// rounded to the nearest half (float_to_half, weights/common/half.h) into
// served_w as floats and into served_f16 as halves; the bias copied as it
// is.  Every weight must lie within the largest half (the learner's SGD
// refuses steps beyond it).
void publish_linear(const float* weight, const float* bias, int dim, int classes, float* served_w, uint16_t* served_f16,
                    float* served_b);

}  // namespace gati::cpu
