// The CUDA runtime contract shared by every csrc/cuda/*.cu file (DESIGN.md, csrc/cuda/*).
//
// Kernels keep the CPU signatures (raw pointers + sizes + hyperparameters), take DEVICE
// pointers, and launch on gradfuse's one stream: the host synchronizes only where it needs a
// value (.item(), .numpy()), so a training step queues its kernels back to back.
// Implemented in csrc/cuda/runtime.cu; built only with -DGRADFUSE_CUDA=ON.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace gf::cuda {

// The stream every gradfuse kernel, copy and cuBLAS call is queued on (created on first use).
cudaStream_t stream();

// Throws std::runtime_error("CUDA error in <what>: <cudaGetErrorString>") when e != cudaSuccess.
// pybind11 maps it to RuntimeError: a CUDA failure never aborts the process.
void check(cudaError_t e, const char* what);

// Caching allocator: after the first training step, alloc() is served from freed blocks of
// the same size class and never calls cudaMalloc. Blocks are 256-byte aligned. free(nullptr)
// is a no-op. Memory is reused in stream order (one stream), so no event bookkeeping is needed.
void* alloc(std::size_t bytes);
void free(void* p);

// Blocks for a 1-D grid-stride launch over n items with `threads` per block, capped so that
// a huge n does not launch more blocks than the device keeps resident.
unsigned grid_for(std::size_t n, unsigned threads = 256);

}  // namespace gf::cuda

// Checks the launch just queued (configuration errors surface here, execution errors at the
// next synchronizing call).
#define GF_CUDA_CHECK(expr) ::gf::cuda::check((expr), #expr)
#define GF_CUDA_CHECK_LAUNCH(name) ::gf::cuda::check(cudaGetLastError(), name)
