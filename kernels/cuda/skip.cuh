// Device-side skip inside a recorded CUDA graph: the rest of a batch-1 run
// happens only while its sample is still running, decided on the device.
//
// Design decision: a conditional IF node (CUDA 12.4+) per exit, nested: the
// body of exit k's node holds everything after exit k, including exit k+1's
// node.  An exit that fires skips the rest of the network without the host
// waiting, and a run costs one graph launch however many exits it passes.
// The condition is set by a one-thread kernel that reads the exit state's
// alive count (written by the compaction before it).  Nested bodies rather
// than a flat chain of IF nodes: after an exit fires nothing more is
// evaluated.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace gati::cuda {

// Whether this process's CUDA runtime and driver have conditional nodes.
bool conditional_nodes_available();

// Inside a capture on `stream` (begun with cudaStreamBeginCapture or
// cudaStreamBeginCaptureToGraph, in `mode`): appends a kernel that sets a
// new condition to (*alive > 0) when the graph runs, and an IF node on it;
// ends the capture (the graph captured so far in *captured: the caller's
// root graph the first time, else a body it does not own) and resumes
// capturing into the IF node's body.  Returns the first failing call's
// error (the capture may then be ended or invalidated: the caller abandons
// the recording); throws nothing.
cudaError_t capture_rest_if_alive(cudaStream_t stream, const int32_t* alive, cudaStreamCaptureMode mode,
                                  cudaGraph_t* captured);

}  // namespace gati::cuda
