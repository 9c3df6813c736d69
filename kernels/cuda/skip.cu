// Device-side skip; see skip.cuh.
#include "kernels/cuda/skip.cuh"

namespace gati::cuda {
namespace {

__global__ void set_if_alive_kernel(cudaGraphConditionalHandle handle, const int32_t* alive) {
  cudaGraphSetConditional(handle, *alive > 0 ? 1u : 0u);
}

}  // namespace

bool conditional_nodes_available() {
  int runtime = 0, driver = 0;
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess || cudaDriverGetVersion(&driver) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return runtime >= 12040 && driver >= 12040;
}

cudaError_t capture_rest_if_alive(cudaStream_t stream, const int32_t* alive, cudaStreamCaptureMode mode,
                                  cudaGraph_t* captured) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  cudaGraph_t graph = nullptr;
  cudaError_t e = cudaStreamGetCaptureInfo(stream, &status, nullptr, &graph);
  if (e != cudaSuccess) return e;
  if (status != cudaStreamCaptureStatusActive || !graph) return cudaErrorStreamCaptureInvalidated;

  cudaGraphConditionalHandle handle = 0;
  if ((e = cudaGraphConditionalHandleCreate(&handle, graph, 0, 0)) != cudaSuccess) return e;
  set_if_alive_kernel<<<1, 1, 0, stream>>>(handle, alive);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;

  // The IF node after everything captured so far (the kernel above last).
  const cudaGraphNode_t* deps = nullptr;
  size_t ndeps = 0;
  if ((e = cudaStreamGetCaptureInfo(stream, &status, nullptr, &graph, &deps, nullptr, &ndeps)) != cudaSuccess) return e;
  cudaGraphNodeParams params{};
  params.type = cudaGraphNodeTypeConditional;
  params.conditional.handle = handle;
  params.conditional.type = cudaGraphCondTypeIf;
  params.conditional.size = 1;
  cudaGraphNode_t node = nullptr;
  if ((e = cudaGraphAddNode(&node, graph, deps, nullptr, ndeps, &params)) != cudaSuccess) return e;
  cudaGraph_t body = params.conditional.phGraph_out[0];
  if ((e = cudaStreamUpdateCaptureDependencies(stream, &node, nullptr, 1, cudaStreamSetCaptureDependencies)) !=
      cudaSuccess)
    return e;

  if ((e = cudaStreamEndCapture(stream, captured)) != cudaSuccess) return e;
  return cudaStreamBeginCaptureToGraph(stream, body, nullptr, nullptr, 0, mode);
}

}  // namespace gati::cuda
