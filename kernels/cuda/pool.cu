// Pooling kernels; see pool.cuh.
//
// In NHWC consecutive threads take consecutive channels, so every warp reads
// and writes contiguous memory; in NCHW the max-pool's consecutive threads
// take consecutive pixels of one channel.  The average pool sums each
// channel in the CPU twin's order with explicitly rounded adds (__fadd_rn
// cannot be contracted into an FMA), so the exit heads, which pool the same
// way, see the same features as the CPU backend.
#include <cfloat>

#include "kernels/cuda/act_type.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/grid.cuh"
#include "kernels/cuda/pool.cuh"
#include "weights/common/error.h"

namespace gati::cuda {
namespace {

template <typename T, Layout kLayout>
__global__ void max_pool_kernel(const T* __restrict__ in, int n, int h, int w, int c, int kernel, int stride, int pad,
                                int oh, int ow, T* __restrict__ out) {
  const long total = long(n) * oh * ow * c;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < total; i += long(gridDim.x) * blockDim.x) {
    int ch, ox, oy;
    long img;
    if (kLayout == Layout::kNhwc) {
      ch = int(i % c);
      const long rest = i / c;
      ox = int(rest % ow);
      oy = int(rest / ow % oh);
      img = rest / ow / oh;
    } else {
      ox = int(i % ow);
      const long rest = i / ow;
      oy = int(rest % oh);
      ch = int(rest / oh % c);
      img = rest / oh / c;
    }
    const T* src = in + img * h * w * c;
    float m = -FLT_MAX;
    bool any = false;
    for (int ky = 0; ky < kernel; ++ky) {
      const int iy = oy * stride - pad + ky;
      if (iy < 0 || iy >= h) continue;
      for (int kx = 0; kx < kernel; ++kx) {
        const int ix = ox * stride - pad + kx;
        if (ix < 0 || ix >= w) continue;
        const float v = load_act(src, act_offset(kLayout, h, w, c, iy, ix, ch));
        m = any ? fmaxf(m, v) : v;
        any = true;
      }
    }
    store_act(out, i, any ? m : -INFINITY);
  }
}

template <typename T>
__global__ void global_avg_pool_kernel(const T* __restrict__ in, int hw, int c, Layout layout, float inv,
                                       float* __restrict__ out) {
  const int img = blockIdx.y;
  const T* src = in + long(img) * hw * c;
  // pixel p of channel ch: NHWC p*c + ch, NCHW ch*hw + p
  const long pixel_step = layout == Layout::kNhwc ? c : 1, channel_step = layout == Layout::kNhwc ? 1 : hw;
  for (int ch = blockIdx.x * blockDim.x + threadIdx.x; ch < c; ch += gridDim.x * blockDim.x) {
    float acc = 0.f;
    for (int p = 0; p < hw; ++p) acc = __fadd_rn(acc, load_act(src, long(p) * pixel_step + long(ch) * channel_step));
    out[long(img) * c + ch] = __fmul_rn(acc, inv);
  }
}

template <typename T>
__global__ void pool_features_kernel(const T* __restrict__ in, int h, int w, int c, Layout layout, PoolSpec pool,
                                     int dim, float* __restrict__ out) {
  const int img = blockIdx.y;
  const T* src = in + long(img) * h * w * c;
  for (int f = blockIdx.x * blockDim.x + threadIdx.x; f < dim; f += gridDim.x * blockDim.x)
    out[long(img) * dim + f] = dev::pool_feature(src, h, w, c, layout, pool, f);
}

template <typename T>
void launch_max_pool(const T* in, int n, int h, int w, int c, Layout layout, int kernel, int stride, int pad, int oh,
                     int ow, T* out, cudaStream_t stream) {
  const unsigned blocks = grid_for(long(n) * oh * ow * c, 256);
  if (layout == Layout::kNchw)
    max_pool_kernel<T, Layout::kNchw><<<blocks, 256, 0, stream>>>(in, n, h, w, c, kernel, stride, pad, oh, ow, out);
  else
    max_pool_kernel<T, Layout::kNhwc><<<blocks, 256, 0, stream>>>(in, n, h, w, c, kernel, stride, pad, oh, ow, out);
}

template <typename T>
void launch_global_avg_pool(const T* in, int n, int hw, int c, Layout layout, float* out, cudaStream_t stream) {
  const int threads = c >= 256 ? 256 : ((c + 31) / 32) * 32;
  const dim3 grid(unsigned((c + threads - 1) / threads), unsigned(n));
  global_avg_pool_kernel<T><<<grid, threads, 0, stream>>>(in, hw, c, layout, 1.0f / float(hw), out);
}

template <typename T>
void launch_pool_features(const T* in, int n, int h, int w, int c, Layout layout, const PoolSpec& pool, float* out,
                          cudaStream_t stream) {
  const int dim = pool.features(c), threads = 256;
  const dim3 grid(unsigned((dim + threads - 1) / threads), unsigned(n));
  pool_features_kernel<T><<<grid, threads, 0, stream>>>(in, h, w, c, layout, pool, dim, out);
}

}  // namespace

void max_pool(const void* in, int n, int h, int w, int c, Layout layout, Precision precision, int kernel, int stride,
              int pad, void* out, cudaStream_t stream) {
  if (n < 1 || h < 1 || w < 1 || c < 1 || kernel < 1 || stride < 1 || pad < 0 || pad >= kernel)
    fail("max_pool: bad shape or window (n ", n, ", ", h, "x", w, "x", c, ", kernel ", kernel, ", stride ", stride,
         ", pad ", pad, ")");
  const int oh = (h + 2 * pad - kernel) / stride + 1, ow = (w + 2 * pad - kernel) / stride + 1;
  if (oh < 1 || ow < 1) fail("max_pool: ", h, "x", w, " is smaller than the window");
  with_act_type(precision, [&](auto tag) {
    using T = decltype(tag);
    launch_max_pool(static_cast<const T*>(in), n, h, w, c, layout, kernel, stride, pad, oh, ow, static_cast<T*>(out),
                    stream);
  });
  CUDA_CHECK_LAUNCH();
}

void global_avg_pool(const void* in, int n, int hw, int c, Layout layout, Precision precision, float* out,
                     cudaStream_t stream) {
  if (n < 1 || hw < 1 || c < 1) fail("global_avg_pool: bad shape (n ", n, ", hw ", hw, ", c ", c, ")");
  if (n > 65535) fail("global_avg_pool: batch ", n, " exceeds 65535");
  with_act_type(precision, [&](auto tag) {
    using T = decltype(tag);
    launch_global_avg_pool(static_cast<const T*>(in), n, hw, c, layout, out, stream);
  });
  CUDA_CHECK_LAUNCH();
}

void pool_features(const void* in, int n, int h, int w, int c, Layout layout, Precision precision, const PoolSpec& pool,
                   float* out, cudaStream_t stream) {
  if (n < 1 || h < 1 || w < 1 || c < 1 || pool.grid < 1 || pool.grid > kMaxPoolGrid)
    fail("pool_features: bad shape or pool (n ", n, ", ", h, "x", w, "x", c, ", grid ", pool.grid, ")");
  if (n > 65535) fail("pool_features: batch ", n, " exceeds 65535");
  with_act_type(precision, [&](auto tag) {
    using T = decltype(tag);
    launch_pool_features(static_cast<const T*>(in), n, h, w, c, layout, pool, out, stream);
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace gati::cuda
