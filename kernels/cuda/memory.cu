// Memory-of-recent-answers kernels; see memory.cuh.
//
// The lookup is one block per row: its threads pool and standardise the row
// into shared memory (and its pending slot), then each thread takes every
// blockDim-th entry and computes its squared distance with the CPU's
// arithmetic (16 lanes of separately rounded multiply-adds, summed in
// order); a block-wide argmin (lowest index on ties) picks the nearest.
// The insertion is one block walking the samples in order, so entries land
// in the same slots as on the CPU.
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/memory.cuh"
#include "weights/common/error.h"

namespace gati::cuda {
namespace {

constexpr int kLookupThreads = 256;
constexpr int kInsertThreads = 256;

template <typename T>
__global__ void memory_lookup_kernel(const T* __restrict__ act, int height, int width, int channels, Layout layout,
                                     MemoryView m, int exit_id, ExitState st, int pos, float* __restrict__ pooled) {
  extern __shared__ float x[];  // [dim] standardised features
  const int row = blockIdx.x, tid = threadIdx.x;
  const int sample = st.position[pos][row];
  const T* src = act + long(row) * height * width * channels;
  for (int f = tid; f < m.dim; f += blockDim.x) {
    const float p = dev::pool_feature(src, height, width, channels, layout, m.pool, f);
    pooled[long(row) * m.dim + f] = p;
    x[f] = dev::standardise(p, m.mean, m.inv_std, f);
    m.pending[long(sample) * m.dim + f] = x[f];
  }
  __syncthreads();
  const int entries = m.fill[0];
  float bd = 0.f;
  int bi = -1;
  for (int k = tid; k < entries; k += blockDim.x) {
    const float d = dev::squared_distance(x, m.keys + long(k) * m.dim, m.dim);
    if (bi < 0 || d < bd) {
      bd = d;
      bi = k;
    }
  }
  dev::block_argmin(bd, bi, &bd, &bi);
  if (tid == 0) {
    const bool hit = bi >= 0 && bd <= m.threshold;
    st.hit[row] = hit ? 1 : 0;
    if (hit) {
      st.exit[sample] = exit_id;
      st.source[sample] = kByMemory;
      st.label[sample] = m.labels[bi];
      st.confidence[sample] = m.confidence[bi];
    }
  }
}

__global__ void memory_insert_kernel(MemoryView m, ExitState st, int n) {
  __shared__ int slot;
  for (int s = 0; s < n; ++s) {
    // The same decision in every thread: the loop stays uniform around the barriers.
    if (st.exit[s] != kFullModel || !(st.confidence[s] >= m.min_confidence)) continue;
    if (threadIdx.x == 0) slot = m.fill[1];
    __syncthreads();
    for (int d = threadIdx.x; d < m.dim; d += blockDim.x)
      m.keys[long(slot) * m.dim + d] = m.pending[long(s) * m.dim + d];
    if (threadIdx.x == 0) {
      m.labels[slot] = st.label[s];
      m.confidence[slot] = st.confidence[s];
      m.fill[1] = (slot + 1) % m.capacity;
      if (m.fill[0] < m.capacity) m.fill[0] += 1;
    }
    __syncthreads();
  }
}

template <typename T>
void launch_memory_lookup(const T* act, int n, int height, int width, int channels, Layout layout, const MemoryView& m,
                          int exit_id, const ExitState& st, int pos, float* pooled, cudaStream_t stream) {
  memory_lookup_kernel<T><<<unsigned(n), kLookupThreads, size_t(m.dim) * sizeof(float), stream>>>(
      act, height, width, channels, layout, m, exit_id, st, pos, pooled);
}

void launch_memory_insert(const MemoryView& m, const ExitState& st, int n, cudaStream_t stream) {
  memory_insert_kernel<<<1, kInsertThreads, 0, stream>>>(m, st, n);
}

void check_memory(const char* what, const MemoryView& m) {
  if (m.dim < 1 || m.capacity < 1 || m.pool.grid < 1 || m.pool.grid > kMaxPoolGrid)
    fail(what, ": bad memory (dim ", m.dim, ", capacity ", m.capacity, ", pool grid ", m.pool.grid, ")");
  if (size_t(m.dim) * sizeof(float) + dev::kStaticSmem > 48 * 1024)
    fail(what, ": ", m.dim, " features do not fit in shared memory (at most ", (48 * 1024 - dev::kStaticSmem) / 4, ")");
}

}  // namespace

void memory_lookup(const void* act, int n, int height, int width, int channels, Layout layout, Precision precision,
                   const MemoryView& m, int exit_id, const ExitState& st, int pos, float* pooled, cudaStream_t stream) {
  check_memory("memory lookup", m);
  if (n < 1 || height < 1 || width < 1 || channels < 1 || m.dim != m.pool.features(channels))
    fail("memory lookup: bad shape (n ", n, ", ", height, "x", width, "x", channels, ", dim ", m.dim, ")");
  if (pos != 0 && pos != 1) fail("memory lookup: position array ", pos, " is not 0 or 1");
  with_act_type(precision, [&](auto tag) {
    using T = decltype(tag);
    launch_memory_lookup(static_cast<const T*>(act), n, height, width, channels, layout, m, exit_id, st, pos, pooled,
                         stream);
  });
  CUDA_CHECK_LAUNCH();
}

void memory_insert(const MemoryView& m, const ExitState& st, int n, cudaStream_t stream) {
  check_memory("memory insert", m);
  if (n < 1) fail("memory insert: bad batch ", n);
  launch_memory_insert(m, st, n, stream);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gati::cuda
