// The exit-point ops on the GPU, twins of kernels/cpu/exit_head_cpu.h (which
// documents their contract): starting a run's exit state, the fused exit
// head, batch compaction and the full model's answers.  All of them only
// enqueue on `stream`; the exit state lives in mapped host memory, so the
// host reads results after a stream synchronisation, without a copy.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/exit_state.h"

namespace gati::cuda {

void begin_exits(const ExitState& st, int n, int classes, cudaStream_t stream);

// Pooling of each row of act (n, height, width, channels, in `layout`) as
// h.pool says into pooled [n, h.dim] (device), standardise, linear scores,
// top softmax, and the hit decision (hit[row]; exit, label, confidence of
// sample position[pos][row]).  Without `scores`, one launch of one block
// per row; with scores (device, [n, h.classes]), three launches spread over
// the GPU (pooling, scoring, deciding), the same values bit for bit; `staged`
// pools NCHW activations a warp per feature through shared memory (ignored
// in NHWC; exit_head.cu).
void exit_head_linear(const void* act, int n, int height, int width, int channels, Layout layout, Precision precision,
                      const LinearHeadView& h, int exit_id, const ExitState& st, int pos, float* pooled, float* scores,
                      bool staged, cudaStream_t stream);

// Device scratch for compaction: `rows` ints and rows * row_floats floats.
struct CompactScratch {
  int32_t* src_of = nullptr;  // [rows + 1]: destination row -> source row, then the survivors' count
  float* rows = nullptr;      // [rows, row_floats]
};

// The rows with hit == 0 of act [n, row_floats] move to the front in order
// (a flag scan, a gather into scratch and a copy back of the rows that
// moved); position[pos_out] and *alive are written.
void compact_rows(float* act, int n, size_t row_floats, const ExitState& st, int pos_in, int pos_out,
                  const CompactScratch& scratch, cudaStream_t stream);

// logits [n, classes] (device) become the answers of samples position[pos][row].
void finish_full_model(const float* logits, int n, int classes, const ExitState& st, int pos, cudaStream_t stream);

}  // namespace gati::cuda
