// SGD on a linear cache model on the GPU; see linear_sgd.cuh.
//
// Four launches in one stream: reset the flags; per sample (one block each)
// standardise, score and softmax with the exit head's arithmetic
// (device_math.cuh) into dL/dz; per parameter (one thread each) the gradient
// summed over samples in order, momentum and the candidate value, flagging the
// first non-finite one; and the commit, which only runs when nothing was
// flagged.  Gradients sum in the CPU twin's order with explicitly rounded
// operations, so both backends take the same step.
#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/cpu/linear_sgd_cpu.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/grid.cuh"
#include "kernels/cuda/linear_sgd.cuh"
#include "weights/common/error.h"

namespace gati::cuda {
namespace {

constexpr int kSampleThreads = 128;

__global__ void sgd_reset_kernel(int32_t* flags) {
  flags[0] = INT_MAX;
  flags[1] = INT_MAX;
}

__global__ void sgd_sample_kernel(LinearHeadMut h, const float* __restrict__ x, const int32_t* __restrict__ labels,
                                  SgdScratch s) {
  extern __shared__ float smem[];
  const int dim = h.dim, classes = h.classes, padded = dev::padded_dim(dim);
  float* xs = smem;
  float* z = smem + padded;
  const int i = blockIdx.x;
  const int label = labels[i];
  if (label < 0 || label >= classes) {  // uniform across the block: no barrier is skipped by part of it
    if (threadIdx.x == 0) atomicMin(&s.flags[0], i);
    return;
  }
  const float* xi = x + long(i) * dim;
  for (int d = threadIdx.x; d < padded; d += blockDim.x) {
    const float v = d < dim ? dev::standardise(xi[d], h.mean, h.inv_std, d) : 0.f;
    xs[d] = v;
    if (d < dim) s.xs[long(i) * dim + d] = v;
  }
  __syncthreads();
  dev::linear_scores(h.weight, h.bias, xs, dim, classes, z);
  __syncthreads();
  int best;
  double sum;
  dev::block_argmax_sum(z, classes, &best, &sum);
  const double zb = double(z[best]);
  for (int k = threadIdx.x; k < classes; k += blockDim.x) {
    const float p = float(exp(double(z[k]) - zb) / sum);
    s.g[long(i) * classes + k] = __fsub_rn(p, k == label ? 1.f : 0.f);
    if (k == label) s.loss[i] = -double(logf(fmaxf(p, 1e-12f)));
  }
}

__global__ void sgd_param_kernel(LinearHeadMut h, int n, SgdHyper hp, SgdScratch s) {
  if (s.flags[0] != INT_MAX) return;
  const long wsize = long(h.classes) * h.dim, total = wsize + h.classes;
  for (long j = blockIdx.x * long(blockDim.x) + threadIdx.x; j < total; j += long(gridDim.x) * blockDim.x) {
    float acc = 0.f, w;
    if (j < wsize) {
      const int k = int(j / h.dim), d = int(j % h.dim);
      for (int i = 0; i < n; ++i)
        acc = __fadd_rn(acc, __fmul_rn(s.g[long(i) * h.classes + k], s.xs[long(i) * h.dim + d]));
      w = h.weight[j];
    } else {
      const int k = int(j - wsize);
      for (int i = 0; i < n; ++i) acc = __fadd_rn(acc, s.g[long(i) * h.classes + k]);
      w = h.bias[k];
    }
    const float grad = __fadd_rn(__fdiv_rn(acc, float(n)), j < wsize ? __fmul_rn(hp.weight_decay, w) : 0.f);
    const float v = __fadd_rn(__fmul_rn(hp.momentum, h.velocity[j]), grad);
    const float nw = __fsub_rn(w, __fmul_rn(hp.lr, v));
    s.next[j] = v;
    s.next[total + j] = nw;
    if (!isfinite(nw) || fabsf(nw) > hp.max_weight) atomicMin(&s.flags[1], int(j < INT_MAX ? j : INT_MAX - 1));
  }
}

__global__ void sgd_commit_kernel(LinearHeadMut h, int n, SgdScratch s, SgdReport r) {
  const bool bad_label = s.flags[0] != INT_MAX, bad_weight = s.flags[1] != INT_MAX;
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    r.status[0] = int32_t(bad_label ? OpStatus::kBadLabel : bad_weight ? OpStatus::kNonFinite : OpStatus::kOk);
    r.status[1] = bad_label ? s.flags[0] : bad_weight ? s.flags[1] : -1;
    double sum = 0;
    if (!bad_label)
      for (int i = 0; i < n; ++i) sum += s.loss[i];
    *r.loss = bad_label ? 0.0 : sum / n;
  }
  if (bad_label || bad_weight) return;
  const long wsize = long(h.classes) * h.dim, total = wsize + h.classes;
  for (long j = blockIdx.x * long(blockDim.x) + threadIdx.x; j < total; j += long(gridDim.x) * blockDim.x) {
    h.velocity[j] = s.next[j];
    if (j < wsize)
      h.weight[j] = s.next[total + j];
    else
      h.bias[j - wsize] = s.next[total + j];
  }
}

void launch_sgd(const LinearHeadMut& h, const float* x, const int32_t* labels, int n, const SgdHyper& hp,
                const SgdScratch& s, const SgdReport& r, cudaStream_t stream) {
  sgd_reset_kernel<<<1, 1, 0, stream>>>(s.flags);
  sgd_sample_kernel<<<unsigned(n), kSampleThreads, dev::scores_smem_bytes(h.dim, h.classes), stream>>>(h, x, labels, s);
  const long total = long(h.classes) * h.dim + h.classes;
  sgd_param_kernel<<<grid_for(total, 256), 256, 0, stream>>>(h, n, hp, s);
  sgd_commit_kernel<<<grid_for(total, 256), 256, 0, stream>>>(h, n, s, r);
}

}  // namespace

void linear_sgd_step(const LinearHeadMut& h, const float* features, const int32_t* labels, int n, const SgdHyper& hp,
                     const SgdScratch& scratch, const SgdReport& report, cudaStream_t stream) {
  if (n < 1 || h.dim < 1 || h.classes < 1)
    fail("SGD step: bad shape (n ", n, ", dim ", h.dim, ", classes ", h.classes, ")");
  dev::check_scores_smem("SGD step", h.dim, h.classes);
  launch_sgd(h, features, labels, n, hp, scratch, report, stream);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gati::cuda
