// Fused bias + activation + gain + clamp: kernel parameters and the launcher shared by
// bias_act.cpp (argument checks, allocation, dispatch) and bias_act.cu (the kernel).
//
// The kernel walks the elements of x in memory (storage) order; x, y and the optional
// xref / yref / dy tensors all have the same sizes and strides, so one storage offset
// addresses the same logical element in each of them. The channel of the element at
// storage offset i is (i / stride_dim) % size_dim.

#pragma once

#include <cstdint>
#include <cuda_runtime_api.h>

// Activation codes (the `cuda_idx` column of the Python activation table).
enum BiasActCode : int {
    kBiasActLinear = 1,
    kBiasActRelu = 2,
    kBiasActLrelu = 3,
    kBiasActTanh = 4,
    kBiasActSigmoid = 5,
    kBiasActElu = 6,
    kBiasActSelu = 7,
    kBiasActSoftplus = 8,
    kBiasActSwish = 9,
};

struct bias_act_params {
    const void* x;     // grad 0: the input; grad 1 / 2: the incoming gradient
    const void* b;     // bias, size_dim elements (contiguous), or nullptr
    const void* xref;  // pre-activation input of the forward pass (swish gradients), or nullptr
    const void* yref;  // output of the forward pass (gradients of the other activations, clamp mask), or nullptr
    const void* dy;    // upstream gradient of the forward pass (grad 2), or nullptr
    void* y;           // output, same sizes and strides as x

    int64_t numel;       // number of elements of x
    int64_t size_dim;    // x.size(dim), >= 1
    int64_t stride_dim;  // x.stride(dim), >= 1

    int grad;  // 0: forward, 1: first-order gradient, 2: second-order term
    int act;   // BiasActCode
    double alpha;
    double gain;
    double clamp;  // negative: no clamping
};

// Launches the kernel on `stream`; returns the launch status (cudaSuccess when all went well).
// Defined (and explicitly instantiated for c10::Half, float and double) in bias_act.cu.
template <typename T>
cudaError_t bias_act_launch(const bias_act_params& p, cudaStream_t stream);
