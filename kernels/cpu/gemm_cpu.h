// Single-precision GEMM with a fused epilogue, the CPU backend's workhorse.
//
//   C[m, n] = act( sum_k A[m, k] * B[k, n] + bias[n] + residual[m, n] )
//
// A is row-major with leading dimension lda (activations in NHWC are exactly
// this for 1x1 convolutions; im2col rows otherwise).  B is the weight matrix,
// packed once at load into column panels of kPanel floats (zero-padded), so
// the inner kernel streams it with aligned vector loads.  The epilogue is
// fused so each output is written once.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "weights/common/aligned.h"

namespace gati::cpu {

constexpr int kPanel = 32;  // columns per packed panel: two 16-float vectors

struct PackedB {
  int k = 0, n = 0, panels = 0;
  AlignedFloats data;  // panels x k x kPanel
};

// Packs B (row-major, k x n, leading dimension ldb).
PackedB pack_b(const float* b, int k, int n, int ldb);

struct RowPool;  // pool_cpu.h

struct Epilogue {
  const float* bias = nullptr;      // [n] or null
  const float* residual = nullptr;  // [m, ldr] or null
  int ldr = 0;
  bool relu = false;
  // Optional: the finished outputs also go to an exit's pooling, row i of C
  // as pixel pool_row0 + i, column j as channel j.  pool_row0 must start an
  // image row; the GEMM then keeps every image row of pool->w pixels inside
  // one tile, handed over in order, as RowPool needs.
  RowPool* pool = nullptr;
  size_t pool_row0 = 0;
};

void gemm(int m, const float* a, int lda, const PackedB& b, float* c, int ldc, const Epilogue& ep);

// The machine's practical peak for this GEMM: the best GFLOP/s of a few runs
// of an n x n x n product (n = 768: B and A stay in cache), on the calling
// thread's thread count.  About 0.1 s.
double measure_gemm_peak_gflops();

// Plain triple loop with the same epilogue: the reference for tests.
void gemm_reference(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc,
                    const Epilogue& ep);

}  // namespace gati::cpu
