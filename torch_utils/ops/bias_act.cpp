// Python binding of the fused bias_act CUDA kernel: argument checks, device guard, output
// allocation and dtype dispatch. The kernel itself is in bias_act.cu.

#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "bias_act.h"

namespace {

// True when `t` addresses its elements exactly like `x`: same sizes and the same strides on
// every dimension that has more than one element (strides of size-1 dimensions do not matter).
bool same_layout(const torch::Tensor& t, const torch::Tensor& x) {
    if (t.dim() != x.dim()) return false;
    for (int64_t d = 0; d < x.dim(); ++d) {
        if (t.size(d) != x.size(d)) return false;
        if (x.size(d) > 1 && t.stride(d) != x.stride(d)) return false;
    }
    return true;
}

void check_like_x(const torch::Tensor& t, const torch::Tensor& x, const char* name) {
    TORCH_CHECK(t.device() == x.device(), "bias_act: ", name, " must be on the same device as x (", x.device(),
                "), got ", t.device());
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "bias_act: ", name, " must have the same dtype as x (",
                x.scalar_type(), "), got ", t.scalar_type());
    TORCH_CHECK(same_layout(t, x), "bias_act: ", name, " must have the same shape and strides as x (shape ",
                x.sizes(), ", strides ", x.strides(), "), got shape ", t.sizes(), ", strides ", t.strides());
}

bool act_needs_yref(int64_t act) { return act != kBiasActLinear && act != kBiasActSwish; }

bool act_has_2nd_grad(int64_t act) {
    return act != kBiasActLinear && act != kBiasActRelu && act != kBiasActLrelu;
}

}  // namespace

// bias_act(x, b, xref, yref, dy, grad, dim, act, alpha, gain, clamp) -> y
//   grad 0: y = clamp(gain * act(x + b))
//   grad 1: x is the incoming gradient g; y = g * gain * act'(.), 0 where |yref| >= clamp
//   grad 2: x is the incoming gradient gg; y = gg * dy * gain * act''(.), 0 where |yref| >= clamp
// Unused tensors (b, xref, yref, dy) are passed as empty tensors.
torch::Tensor bias_act(torch::Tensor x, torch::Tensor b, torch::Tensor xref, torch::Tensor yref, torch::Tensor dy,
                       int64_t grad, int64_t dim, int64_t act, double alpha, double gain, double clamp) {
    // x
    TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor, got a tensor on ", x.device());
    const auto dtype = x.scalar_type();
    TORCH_CHECK(dtype == torch::kHalf || dtype == torch::kFloat || dtype == torch::kDouble,
                "bias_act: x must be float16, float32 or float64, got ", dtype);
    TORCH_CHECK(x.is_non_overlapping_and_dense(),
                "bias_act: x must be non-overlapping and dense (contiguous in some memory format), got strides ",
                x.strides(), " for shape ", x.sizes());

    // Scalars
    TORCH_CHECK(grad >= 0 && grad <= 2, "bias_act: grad must be 0, 1 or 2, got ", grad);
    TORCH_CHECK(act >= kBiasActLinear && act <= kBiasActSwish, "bias_act: act must be an activation code 1..9, got ",
                act);
    const int64_t ndim = x.dim();
    if (dim < 0) dim += ndim;
    TORCH_CHECK(ndim == 0 ? dim == 0 : (dim >= 0 && dim < ndim), "bias_act: dim out of range for a tensor with ",
                ndim, " dimensions");
    TORCH_CHECK(std::isfinite(gain), "bias_act: gain must be finite, got ", gain);

    // b
    const bool has_b = b.numel() > 0;
    if (has_b) {
        TORCH_CHECK(b.device() == x.device(), "bias_act: b must be on the same device as x (", x.device(), "), got ",
                    b.device());
        TORCH_CHECK(b.scalar_type() == dtype, "bias_act: b must have the same dtype as x (", dtype, "), got ",
                    b.scalar_type());
        TORCH_CHECK(b.dim() == 1, "bias_act: b must be 1-D, got shape ", b.sizes());
        TORCH_CHECK(ndim > 0 && b.size(0) == x.size(dim), "bias_act: b must have x.size(dim) = ",
                    (ndim > 0 ? x.size(dim) : 1), " elements, got ", b.size(0));
        b = b.contiguous();
    }

    // Saved tensors
    const bool has_xref = xref.numel() > 0;
    const bool has_yref = yref.numel() > 0;
    const bool has_dy = dy.numel() > 0;
    if (has_xref) check_like_x(xref, x, "xref");
    if (has_yref) check_like_x(yref, x, "yref");
    if (has_dy) check_like_x(dy, x, "dy");
    if (grad >= 1 && x.numel() > 0) {
        TORCH_CHECK(act != kBiasActSwish || has_xref, "bias_act: the swish gradient (grad=", grad,
                    ") needs xref, the forward input");
        TORCH_CHECK(!act_needs_yref(act) || has_yref, "bias_act: the gradient (grad=", grad, ") of activation ",
                    act, " needs yref, the forward output");
        TORCH_CHECK(clamp < 0 || has_yref, "bias_act: gradients with clamp >= 0 need yref, the forward output");
        TORCH_CHECK(grad != 2 || !act_has_2nd_grad(act) || has_dy,
                    "bias_act: the second-order term (grad=2) needs dy, the upstream gradient");
    }

    const c10::cuda::CUDAGuard device_guard(x.device());
    torch::Tensor y = torch::empty_like(x);  // keeps x's strides (x is non-overlapping and dense)
    if (x.numel() == 0) return y;
    TORCH_CHECK(y.strides() == x.strides(), "bias_act: internal error, output strides differ from the input's");

    bias_act_params p;
    p.x = x.data_ptr();
    p.b = has_b ? b.data_ptr() : nullptr;
    p.xref = has_xref ? xref.data_ptr() : nullptr;
    p.yref = has_yref ? yref.data_ptr() : nullptr;
    p.dy = has_dy ? dy.data_ptr() : nullptr;
    p.y = y.data_ptr();
    p.numel = x.numel();
    p.size_dim = ndim > 0 ? x.size(dim) : 1;
    p.stride_dim = (ndim > 0 && p.size_dim > 1) ? x.stride(dim) : 1;
    if (p.size_dim <= 1) p.size_dim = 1;
    p.grad = static_cast<int>(grad);
    p.act = static_cast<int>(act);
    p.alpha = alpha;
    p.gain = gain;
    p.clamp = clamp;

    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    cudaError_t err = cudaSuccess;
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(dtype, "bias_act_cuda", [&] { err = bias_act_launch<scalar_t>(p, stream); });
    TORCH_CHECK(err == cudaSuccess, "bias_act: CUDA kernel launch failed: ", cudaGetErrorString(err));
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act,
          "Fused bias + activation + gain + clamp (grad=0), its gradient (grad=1) and second-order term (grad=2).",
          py::arg("x"), py::arg("b"), py::arg("xref"), py::arg("yref"), py::arg("dy"), py::arg("grad"),
          py::arg("dim"), py::arg("act"), py::arg("alpha"), py::arg("gain"), py::arg("clamp"));
}
