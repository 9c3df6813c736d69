// One SGD step (momentum, weight decay) on a learned linear cache model, on
// the CPU: the offline trainer's inner step, the online update from served
// traffic, and the oracle of the CUDA update kernel.
//
// Design decision: the step is computed aside and committed only when every
// new weight is finite and below kMaxWeight; otherwise nothing changes and a
// status word says why.  Device code cannot throw, so the CPU twin does not
// either: the host wrapper (cache/) turns the status into an error.
#pragma once

#include "kernels/exit_state.h"

namespace gati::cpu {

constexpr float kMaxWeight = 1e6f;

struct SgdResult {
  OpStatus status = OpStatus::kOk;
  double loss = 0;      // mean cross-entropy of the batch before the step
  long bad_index = -1;  // the label or weight index that caused a rejection
};

// features [n, dim] (pooled, not standardised), labels [n] in [0, classes).
SgdResult linear_sgd_step(const LinearHeadMut& h, const float* features, const int* labels, int n,
                          const SgdHyper& hp);

}  // namespace gati::cpu
