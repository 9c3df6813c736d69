// One SGD step (momentum, weight decay) on a learned linear cache model, on
// the CPU: the offline trainer's inner step, the online update from served
// traffic, and the oracle of the CUDA update kernel.
//
// Design decision: the step is computed aside and committed only when every
// new weight is finite and within hp.max_weight; otherwise nothing changes and a
// status word says why.  Device code cannot throw, so the CPU twin does not
// either: the host wrapper (cache/) turns the status into an error.
#pragma once

#include "kernels/exit_state.h"

namespace gati::cpu {

struct SgdResult {
  OpStatus status = OpStatus::kOk;
  double loss = 0;      // mean cross-entropy of the batch before the step
  long bad_index = -1;  // the label or weight index that caused a rejection
};

// Distillation from the full model (as GATI trains its predictors): the
// loss is (1 - alpha) * cross-entropy(label) + alpha * T^2 *
// KL(teacher || softmax(z / T)), with the teacher's probabilities at
// temperature T given per sample.  alpha = 0 (or no teacher): the labels
// alone, as the online update and its CUDA twin train.
struct Distill {
  const float* teacher = nullptr;  // [n, classes]: softmax(full model's logits / T)
  float alpha = 0, temperature = 1;
};

// features [n, dim] (pooled, not standardised), labels [n] in [0, classes).
SgdResult linear_sgd_step(const LinearHeadMut& h, const float* features, const int* labels, int n, const SgdHyper& hp,
                          const Distill& distill = {});

}  // namespace gati::cpu
