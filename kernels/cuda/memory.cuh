// The memory of recent answers on the GPU, twins of kernels/cpu/memory_cpu.h
// (which documents their contract).  Both only enqueue on `stream`: the
// lookup reads the entry count on the device, and the insertion after a run
// reads the exit state the run wrote, so neither waits for the host.
#pragma once

#include <cuda_runtime.h>

#include "kernels/exit_state.h"

namespace gati::cuda {

// One launch: pool each row of act (n, height, width, channels, in `layout`) as m.pool
// says into pooled [n, m.dim] (device), standardise into m.pending[sample],
// find the nearest entry and decide.
void memory_lookup(const void* act, int n, int height, int width, int channels, Layout layout, Precision precision,
                   const MemoryView& m, int exit_id, const ExitState& st, int pos, float* pooled, cudaStream_t stream);

// One launch: the full model's confident answers of the n samples become
// entries, in sample order.
void memory_insert(const MemoryView& m, const ExitState& st, int n, cudaStream_t stream);

}  // namespace gati::cuda
