// The per-sample exit state of one run, as plain pointers that both the CPU
// kernels and the CUDA kernels read and write.
//
// Design decision: everything here lives in host-visible memory (mapped
// pinned memory on CUDA), so the host reads who exited where, with which
// label and confidence, without a device-to-host copy; kernels write it in
// the same stream as the convolutions.  Rows are "compacted rows" (the dense
// batch of samples still running); samples are the caller's order.
#pragma once

#include <cstdint>

namespace gati {

// Marks a sample that is still running (no exit and no full-model answer yet).
constexpr int32_t kStillRunning = -2;
// The exit value of a sample answered by the full model.
constexpr int32_t kFullModel = -1;

struct ExitState {
  int32_t* position[2] = {nullptr, nullptr};  // [max_batch] compacted row -> sample; two, for out-of-place compaction
  int32_t* hit = nullptr;                     // [max_batch] per row: 1 = answered at the current exit
  int32_t* alive = nullptr;                   // [1] rows still running
  int32_t* exit = nullptr;                    // [max_batch] per sample: exit point, kFullModel or kStillRunning
  int32_t* label = nullptr;                   // [max_batch] per sample
  float* confidence = nullptr;                // [max_batch] per sample: top softmax probability
  float* logits = nullptr;                    // [max_batch, classes] per sample; NaN rows for samples that exited
};

// A learned linear cache model at one exit (GATI's predictor on pooled
// features): z = W * ((pooled - mean) * inv_std) + b, hit when the top softmax
// probability of z reaches `threshold`.  Pointers are backend memory.
struct LinearHeadView {
  int dim = 0, classes = 0;
  const float* mean = nullptr;     // [dim]
  const float* inv_std = nullptr;  // [dim]
  const float* weight = nullptr;   // [classes, dim]
  const float* bias = nullptr;     // [classes]
  float threshold = 2.0f;          // > 1 never hits
};

// The same model with writable parameters and its momentum buffer, for the
// SGD update (offline training and online updates from served traffic).
struct LinearHeadMut {
  int dim = 0, classes = 0;
  const float* mean = nullptr;     // [dim]
  const float* inv_std = nullptr;  // [dim]
  float* weight = nullptr;         // [classes, dim]
  float* bias = nullptr;           // [classes]
  float* velocity = nullptr;       // [classes * dim + classes], weight part first
};

struct SgdHyper {
  float lr = 0.05f, momentum = 0.9f, weight_decay = 5e-4f;
};

// Status words written by device code (which cannot throw) and by its CPU twin;
// the host wrapper turns anything but kOk into a gati::Error naming the place.
enum class OpStatus : int32_t { kOk = 0, kNonFinite = 1, kBadLabel = 2 };

}  // namespace gati
