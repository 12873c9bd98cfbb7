// Python binding of the upfirdn2d CUDA kernels: argument checks, device guard, output
// allocation and dtype dispatch. The kernels are in upfirdn2d.cu.

#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "upfirdn2d.h"

namespace {

constexpr int64_t kMaxExtent = int64_t(1) << 29;  // keeps every int index computation in range

}  // namespace

// upfirdn2d(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain) -> y
//   x: [N, C, H, W] float16/32/64 CUDA tensor (any strides); f: [fh, fw] float32 on the same device.
//   y[n, c, oy, ox] = sum_{ky, kx} g[ky, kx] * u[n, c, oy*downy + ky - pady0, ox*downx + kx - padx0], with
//   u = x upsampled by zero insertion (up - 1 zeros after each sample, zero outside) and
//   g = gain * f, flipped in both axes unless flip (so flip=false is a true convolution).
//   y has x's memory format (channels_last or contiguous).
torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor f, int64_t upx, int64_t upy, int64_t downx, int64_t downy,
                        int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, bool flip, double gain) {
    // x
    TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor, got a tensor on ", x.device());
    const auto dtype = x.scalar_type();
    TORCH_CHECK(dtype == torch::kHalf || dtype == torch::kFloat || dtype == torch::kDouble,
                "upfirdn2d: x must be float16, float32 or float64, got ", dtype);
    TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be 4-D [N, C, H, W], got shape ", x.sizes());
    for (int64_t d = 0; d < 4; ++d) {
        TORCH_CHECK(x.size(d) <= kMaxExtent, "upfirdn2d: x is too large along dimension ", d, " (", x.size(d), ")");
    }
    TORCH_CHECK(x.size(0) * x.size(1) <= int64_t(0x7fffffff), "upfirdn2d: N * C = ", x.size(0) * x.size(1),
                " is too large");

    // f
    TORCH_CHECK(f.device() == x.device(), "upfirdn2d: f must be on the same device as x (", x.device(), "), got ",
                f.device());
    TORCH_CHECK(f.scalar_type() == torch::kFloat, "upfirdn2d: f must be float32, got ", f.scalar_type());
    TORCH_CHECK(f.dim() == 2, "upfirdn2d: f must be 2-D [fh, fw], got shape ", f.sizes());
    TORCH_CHECK(f.size(0) >= 1 && f.size(1) >= 1, "upfirdn2d: f must not be empty, got shape ", f.sizes());
    TORCH_CHECK(f.size(0) <= 4096 && f.size(1) <= 4096 && f.numel() <= (int64_t(1) << 24),
                "upfirdn2d: f is too large, got shape ", f.sizes());

    // Scalars
    TORCH_CHECK(upx >= 1 && upy >= 1, "upfirdn2d: up factors must be >= 1, got upx=", upx, ", upy=", upy);
    TORCH_CHECK(downx >= 1 && downy >= 1, "upfirdn2d: down factors must be >= 1, got downx=", downx,
                ", downy=", downy);
    TORCH_CHECK(upx <= 4096 && upy <= 4096 && downx <= 4096 && downy <= 4096,
                "upfirdn2d: up/down factors must be <= 4096");
    TORCH_CHECK(std::abs(padx0) <= kMaxExtent && std::abs(padx1) <= kMaxExtent && std::abs(pady0) <= kMaxExtent &&
                    std::abs(pady1) <= kMaxExtent,
                "upfirdn2d: padding is too large");
    TORCH_CHECK(std::isfinite(gain), "upfirdn2d: gain must be finite, got ", gain);

    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    const int64_t fh = f.size(0), fw = f.size(1);
    const int64_t upW = W * upx, upH = H * upy;
    TORCH_CHECK(upW <= kMaxExtent && upH <= kMaxExtent, "upfirdn2d: the upsampled image is too large (", upH, " x ",
                upW, ")");
    const int64_t numW = upW + padx0 + padx1 - fw + downx;
    const int64_t numH = upH + pady0 + pady1 - fh + downy;
    TORCH_CHECK(numW >= downx && numH >= downy, "upfirdn2d: the output would be empty: input ", H, " x ", W,
                ", up ", upy, " x ", upx, ", padding x [", padx0, ", ", padx1, "], y [", pady0, ", ", pady1,
                "], filter ", fh, " x ", fw, ", down ", downy, " x ", downx);
    const int64_t outW = numW / downx;
    const int64_t outH = numH / downy;
    TORCH_CHECK(outW <= kMaxExtent && outH <= kMaxExtent, "upfirdn2d: the output is too large (", outH, " x ",
                outW, ")");

    const c10::cuda::CUDAGuard device_guard(x.device());
    const torch::Tensor fc = f.contiguous();
    torch::Tensor y = torch::empty({N, C, outH, outW}, x.options().memory_format(x.suggest_memory_format()));
    if (y.numel() == 0) return y;

    upfirdn2d_params p;
    p.x = x.data_ptr();
    p.f = fc.data_ptr<float>();
    p.y = y.data_ptr();
    p.n = static_cast<int>(N);
    p.c = static_cast<int>(C);
    p.inH = static_cast<int>(H);
    p.inW = static_cast<int>(W);
    p.outH = static_cast<int>(outH);
    p.outW = static_cast<int>(outW);
    p.sxN = x.stride(0);
    p.sxC = x.stride(1);
    p.sxH = x.stride(2);
    p.sxW = x.stride(3);
    p.syN = y.stride(0);
    p.syC = y.stride(1);
    p.syH = y.stride(2);
    p.syW = y.stride(3);
    p.upx = static_cast<int>(upx);
    p.upy = static_cast<int>(upy);
    p.downx = static_cast<int>(downx);
    p.downy = static_cast<int>(downy);
    p.padx0 = static_cast<int>(padx0);
    p.padx1 = static_cast<int>(padx1);
    p.pady0 = static_cast<int>(pady0);
    p.pady1 = static_cast<int>(pady1);
    p.fw = static_cast<int>(fw);
    p.fh = static_cast<int>(fh);
    p.flip = flip;
    p.gain = static_cast<float>(gain);

    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    cudaError_t err = cudaSuccess;
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(dtype, "upfirdn2d_cuda", [&] { err = upfirdn2d_launch<scalar_t>(p, stream); });
    TORCH_CHECK(err == cudaSuccess, "upfirdn2d: CUDA kernel launch failed: ", cudaGetErrorString(err));
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d,
          "Upsample by zero insertion, pad/crop, FIR-filter and downsample a [N, C, H, W] tensor in one pass.",
          py::arg("x"), py::arg("f"), py::arg("upx"), py::arg("upy"), py::arg("downx"), py::arg("downy"),
          py::arg("padx0"), py::arg("padx1"), py::arg("pady0"), py::arg("pady1"), py::arg("flip"), py::arg("gain"));
}
