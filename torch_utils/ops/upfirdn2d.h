// Upsample, FIR filter, downsample (upfirdn2d): kernel parameters and the launcher shared by
// upfirdn2d.cpp (argument checks, allocation, dispatch) and upfirdn2d.cu (the kernels).
//
// Semantics, per axis: insert (up - 1) zeros after every input sample, pad with pad0 zeros
// before and pad1 after (negative pads crop), correlate with g in "valid" mode and keep every
// down-th sample starting at 0:
//
//   out[n, c, oy, ox] = sum_{ky < fh, kx < fw} g[ky, kx] * u[n, c, oy * downy + ky - pady0, ox * downx + kx - padx0]
//   u[n, c, y, x]     = x[n, c, y / upy, x / upx] if y % upy == 0 and x % upx == 0 (and inside), else 0
//   g[ky, kx]         = gain * (flip ? f[ky, kx] : f[fh - 1 - ky, fw - 1 - kx])
//
//   outH = (H * upy + pady0 + pady1 - fh + downy) / downy, outW likewise.

#pragma once

#include <cstdint>
#include <cuda_runtime_api.h>

struct upfirdn2d_params {
    const void* x;   // input [n, c, inH, inW], element strides below
    const float* f;  // filter [fh, fw], contiguous float32
    void* y;         // output [n, c, outH, outW], element strides below

    int n, c, inH, inW;
    int outH, outW;
    int64_t sxN, sxC, sxH, sxW;  // input strides (elements)
    int64_t syN, syC, syH, syW;  // output strides (elements)

    int upx, upy, downx, downy;
    int padx0, padx1, pady0, pady1;
    int fw, fh;
    bool flip;
    float gain;
};

// Launches the kernel on `stream`; returns the launch status (cudaSuccess when all went well).
// Defined (and explicitly instantiated for c10::Half, float and double) in upfirdn2d.cu.
template <typename T>
cudaError_t upfirdn2d_launch(const upfirdn2d_params& p, cudaStream_t stream);
