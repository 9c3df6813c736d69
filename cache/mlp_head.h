// GATI's MLP predictor: a learned head with one hidden layer of ReLU units
// between the standardised features and the class scores
// (LinearHeadView::hidden), and its offline training.
//
// Design decision: the hidden layer is what a linear head lacks at the
// earliest exits, whose features are close to the pixels: on the demo
// ResNet-20 (mix4x4 pooling, 50000 training images, 10000 held out) the
// share of held-out images a head answers at 0.995 agreement with the full
// model went from 0.33 (linear) to 0.64 with 16 hidden units at the stem and
// from 0.63 to 0.81 with 64 after layer1.2, for 512 x 16 extra MACs (0.03%
// of the model).  Serving runs the same kernels as a linear head twice (the
// hidden units are dot products as class scores are), so the CPU and CUDA
// twins stay bit for bit alike.  Only offline training is here: online SGD
// updates linear heads, and a head with a hidden layer is served as built.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/backend.h"
#include "kernels/cpu/linear_sgd_cpu.h"

namespace gati {

// Sets head.hidden units and both layers' weights and biases to seeded
// uniform values in +-1/sqrt(inputs) (nn.Linear's default); head.dim and
// head.classes must be set.
void init_mlp(ExitHeadSpec& head, int hidden, uint32_t seed);

// One SGD step (momentum; weight decay on the weights, not the biases)
// through both layers of a head with a hidden layer, on features [n, dim]
// (pooled, not standardised) and labels [n], with distillation as
// cpu::linear_sgd_step has it.  `velocity` is sized on the first call.
// Computed aside and committed only when every new parameter is finite and
// within hp.max_weight; the result says why not (bad_index: the label, or
// the parameter in the order score weights, score biases, hidden weights,
// hidden biases).
cpu::SgdResult mlp_sgd_step(ExitHeadSpec& head, const float* features, const int* labels, int n, const SgdHyper& hp,
                            std::vector<float>& velocity, const cpu::Distill& distill = {});

}  // namespace gati
