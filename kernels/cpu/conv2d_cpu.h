// 2-D convolution on the CPU, NHWC, with folded-BN bias, residual add and ReLU
// fused into the GEMM epilogue.
//
// 1x1 stride-1 convolutions read the activations directly as the GEMM's A
// matrix; every other shape goes through im2col in row chunks (so the scratch
// stays bounded whatever the batch), one GEMM per group.
#pragma once

#include <vector>

#include "kernels/cpu/gemm_cpu.h"
#include "kernels/cpu/pool_cpu.h"

namespace gati::cpu {

struct ConvParams {
  int cin = 0, cout = 0, kernel = 1, stride = 1, pad = 0, groups = 1;
  int out_size(int in) const { return (in + 2 * pad - kernel) / stride + 1; }
};

struct PackedConv {
  ConvParams p;
  std::vector<PackedB> groups;  // B_g: [kernel*kernel*cin_g, cout_g]
  AlignedVector bias;           // [cout]
  // Grouped convs with cin_g == cout_g dividing 16 or a multiple of it
  // (ResNeXt's 3x3s): weights as
  // [kernel*kernel][cin_g][cout] for the direct grouped kernel, which does
  // not run one narrow GEMM per group.
  AlignedVector grouped;
};

// Packs PyTorch-ordered weights [cout, cin/groups, k, k] and a bias [cout].
PackedConv pack_conv(const ConvParams& p, const float* weight_oihw, const float* bias);

// Grows on demand; one per backend (not shared between threads running convs).
struct Workspace {
  AlignedFloats data;
  size_t capacity = 0;
  float* get(size_t n);
};

// out[n, oh, ow, cout] = relu?(conv(in) + bias + residual?)
// With `pool` (started for [n, oh, ow, cout]), the output is also pooled as
// it is written, while it is still in cache, where this convolution's path
// allows (every path but grouped GEMMs and small stems); returns whether it
// was (pool then holds the output's row sums).
bool conv2d_nhwc(const PackedConv& conv, const float* in, int n, int h, int w, float* out, const float* residual,
                 bool relu, Workspace& ws, RowPool* pool = nullptr);

// Whether conv2d_nhwc pools `conv`'s output as it writes it, when given a
// RowPool.
bool pools_in_epilogue(const PackedConv& conv);

// Straight loops from the unpacked weights, in double: the test oracle.
void conv2d_nhwc_reference(const ConvParams& p, const float* weight_oihw, const float* bias, const float* in, int n,
                           int h, int w, float* out, const float* residual, bool relu);

}  // namespace gati::cpu
