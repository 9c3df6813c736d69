// The exit-point ops on the CPU, and the oracle of their CUDA twins:
// starting a run's exit state, the exit head (pool, cache-model scores,
// confidence, decision), batch compaction, and writing the full model's
// answers.
//
// Design decision: confidence has one definition everywhere (the top softmax
// probability, computed as 1 / sum_k exp(z_k - z_max) in double): the exit
// heads, the full model's answers, calibration and the CUDA kernels all call
// or mirror top_softmax, so a threshold means the same thing on every path.
#pragma once

#include <cstddef>

#include "kernels/exit_state.h"

namespace gati::cpu {

// Argmax of z[classes] (first on ties) and its softmax probability.
int top_softmax(const float* z, int classes, float* confidence);
// Full softmax into probs[classes]; returns the argmax (first on ties).
int softmax(const float* z, int classes, float* probs);
// top_softmax for a decision against `threshold`: the label, and the
// confidence as top_softmax gives it when it reaches the threshold; for a
// miss it may stop summing once the sum proves the miss and give -1.
// (At batch 1 a 1000-class head's exp() calls are a tenth of its cost.)
int top_softmax_or_miss(const float* z, int classes, float threshold, float* confidence);
// A linear head's answer for its scores z[h.classes]: the argmax, and the
// confidence its threshold is held against (top softmax probability, or the
// selector's when the head has one).
int head_decision(const LinearHeadView& h, const float* z, float* confidence);

// Every sample running, rows in caller order, count = n.
void begin_exits(const ExitState& st, int n, int classes);

// sum_d w[d] * x[d] in 16 lane partial sums (lane l takes d = l mod 16,
// each a chain of rounded multiply-adds) added lane 0..15: the dot product
// every exit head uses, mirrored bit for bit by the CUDA kernels.
float lane_dot(const float* w, const float* x, int dim);

// Linear head scores for one pooled feature vector: z[classes].  The dot
// products run in 16 lanes summed in a fixed order, so a sample's scores are
// the same whatever batch it is in.
void linear_head_scores(const LinearHeadView& h, const float* pooled, float* z);

// For each of the n rows of act (NHWC [n, height, width, c], with
// h.dim == h.pool.features(c)): pool as h.pool says into pooled[n, h.dim],
// score, and when the top probability reaches the threshold record (exit_id,
// label, confidence) for sample position[pos][row] and set hit[row] = 1
// (else 0).
void exit_head_linear(const float* act, int n, int height, int width, int c, const LinearHeadView& h, int exit_id,
                      const ExitState& st, int pos, float* pooled);
// The same from features already pooled: pooled[n, h.dim].
void exit_head_linear_pooled(const float* pooled, int n, const LinearHeadView& h, int exit_id, const ExitState& st,
                             int pos);

// Whether the library was built to convert halves to floats in vector
// instructions (AVX-512 or F16C): only then does reading a head's weights
// as halves (LinearHeadView::weight_f16) beat reading the floats.
bool fast_half_weights();

// Moves the rows with hit == 0 of act [n, row_floats] to the front, in
// order, in place, and position[pos_in] into position[pos_out]; writes the
// survivors' count to *alive.  Rows already in place are not touched, so a
// batch where nobody exited costs no copy.
void compact_rows(float* act, int n, size_t row_floats, const ExitState& st, int pos_in, int pos_out);

// The n rows still running reached the classifier: logits [n, classes] in row
// order become the answers of samples position[pos][row] (exit kFullModel).
// Samples that exited earlier get NaN logits.
void finish_full_model(const float* logits, int n, int classes, const ExitState& st, int pos);

}  // namespace gati::cpu
