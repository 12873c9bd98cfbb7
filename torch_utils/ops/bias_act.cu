// Fused bias + activation + gain + clamp, its first-order gradient and its second-order term.
//
//   grad 0:  y  = clamp(gain * f(x + b[c]))
//   grad 1:  dx = g  * gain * f'(.)          (x holds g;  0 where |yref| >= clamp)
//   grad 2:  d2 = gg * dy * gain * f''(.)    (x holds gg; 0 where |yref| >= clamp)
//
// The derivatives are evaluated from the saved tensors: swish uses z = xref + b[c], every
// other activation uses t = yref / gain = f(z). Math runs in float for half and float
// inputs and in double for double inputs.

#include "bias_act.h"

#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace bias_act_detail {

template <typename T>
struct acc_type {
    using type = float;
};
template <>
struct acc_type<double> {
    using type = double;
};

// Math helpers with float and double overloads (host and device, so that the element
// function can also be exercised on the CPU).
__host__ __device__ inline float m_exp(float v) { return expf(v); }
__host__ __device__ inline double m_exp(double v) { return exp(v); }
__host__ __device__ inline float m_expm1(float v) { return expm1f(v); }
__host__ __device__ inline double m_expm1(double v) { return expm1(v); }
__host__ __device__ inline float m_log1p(float v) { return log1pf(v); }
__host__ __device__ inline double m_log1p(double v) { return log1p(v); }
__host__ __device__ inline float m_tanh(float v) { return tanhf(v); }
__host__ __device__ inline double m_tanh(double v) { return tanh(v); }
__host__ __device__ inline float m_abs(float v) { return fabsf(v); }
__host__ __device__ inline double m_abs(double v) { return fabs(v); }

constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kExpLimit = 80.0;       // beyond this |z| exp() over/underflows: saturate
constexpr double kSoftplusLimit = 20.0;  // torch.nn.functional.softplus's default threshold

template <typename A>
__host__ __device__ inline A sigmoid_of(A z) {
    if (z < A(-kExpLimit)) return A(0);
    if (z > A(kExpLimit)) return A(1);
    return A(1) / (A(1) + m_exp(-z));
}

// f(z)
template <int ACT, typename A>
__host__ __device__ inline A act_value(A z, A alpha) {
    if constexpr (ACT == kBiasActLinear) {
        return z;
    } else if constexpr (ACT == kBiasActRelu) {
        return z > A(0) ? z : A(0);
    } else if constexpr (ACT == kBiasActLrelu) {
        return z > A(0) ? z : z * alpha;
    } else if constexpr (ACT == kBiasActTanh) {
        if (z < A(-kExpLimit)) return A(-1);
        if (z > A(kExpLimit)) return A(1);
        return m_tanh(z);
    } else if constexpr (ACT == kBiasActSigmoid) {
        return sigmoid_of(z);
    } else if constexpr (ACT == kBiasActElu) {
        return z >= A(0) ? z : m_expm1(z);
    } else if constexpr (ACT == kBiasActSelu) {
        return z >= A(0) ? A(kSeluScale) * z : A(kSeluScale * kSeluAlpha) * m_expm1(z);
    } else if constexpr (ACT == kBiasActSoftplus) {
        return z > A(kSoftplusLimit) ? z : m_log1p(m_exp(z));
    } else {  // swish
        return z * sigmoid_of(z);
    }
}

// f'(.) from t = f(z) (z for swish).
template <int ACT, typename A>
__host__ __device__ inline A act_grad1(A z, A t, A alpha) {
    if constexpr (ACT == kBiasActLinear) {
        return A(1);
    } else if constexpr (ACT == kBiasActRelu) {
        return t > A(0) ? A(1) : A(0);
    } else if constexpr (ACT == kBiasActLrelu) {
        return t > A(0) ? A(1) : alpha;
    } else if constexpr (ACT == kBiasActTanh) {
        return A(1) - t * t;
    } else if constexpr (ACT == kBiasActSigmoid) {
        return t * (A(1) - t);
    } else if constexpr (ACT == kBiasActElu) {
        return t >= A(0) ? A(1) : t + A(1);
    } else if constexpr (ACT == kBiasActSelu) {
        return t >= A(0) ? A(kSeluScale) : t + A(kSeluScale * kSeluAlpha);
    } else if constexpr (ACT == kBiasActSoftplus) {
        return -m_expm1(-t);  // 1 - exp(-t) = sigmoid(z), without cancellation for small t
    } else {  // swish
        const A s = sigmoid_of(z);
        return s + z * s * (A(1) - s);
    }
}

// f''(.) from t = f(z) (z for swish).
template <int ACT, typename A>
__host__ __device__ inline A act_grad2(A z, A t) {
    if constexpr (ACT == kBiasActLinear || ACT == kBiasActRelu || ACT == kBiasActLrelu) {
        return A(0);
    } else if constexpr (ACT == kBiasActTanh) {
        return A(-2) * t * (A(1) - t * t);
    } else if constexpr (ACT == kBiasActSigmoid) {
        return t * (A(1) - t) * (A(1) - A(2) * t);
    } else if constexpr (ACT == kBiasActElu) {
        return t >= A(0) ? A(0) : t + A(1);
    } else if constexpr (ACT == kBiasActSelu) {
        return t >= A(0) ? A(0) : t + A(kSeluScale * kSeluAlpha);
    } else if constexpr (ACT == kBiasActSoftplus) {
        const A s = -m_expm1(-t);
        return s * (A(1) - s);
    } else {  // swish
        const A s = sigmoid_of(z);
        return s * (A(1) - s) * (A(2) + z * (A(1) - A(2) * s));
    }
}

// Uniform (per launch) values, converted once.
template <typename A>
struct Uniforms {
    A alpha, gain, inv_gain, clamp;
    A clamp_mask;  // clamp rounded to T: what a saturated forward output holds after storing
    bool has_clamp, has_bias, index32;
};

template <typename T, typename A>
__host__ __device__ inline Uniforms<A> make_uniforms(const bias_act_params& p) {
    Uniforms<A> u;
    u.alpha = A(p.alpha);
    u.gain = A(p.gain);
    // t = yref / gain. With gain == 0 every gradient is 0 anyway; t = 0 keeps it finite.
    u.inv_gain = p.gain != 0.0 ? A(1.0 / p.gain) : A(0);
    u.clamp = A(p.clamp);
    // The forward output is stored as T, so a saturated value reads back as T(clamp); for
    // half, T(clamp) may lie below clamp (e.g. 0.9 -> 0.89990234375), so compare against that.
    u.clamp_mask = static_cast<A>(static_cast<T>(u.clamp));
    u.has_clamp = p.clamp >= 0.0;
    u.has_bias = p.b != nullptr;
    u.index32 = p.numel <= int64_t(0x7fffffff);
    return u;
}

// The inputs of one element, loaded before any output is stored (so that the loads of several
// elements can be in flight at once).
template <typename A>
struct Inputs {
    A x, bias, xref, yref, dy;
};

template <typename T, int ACT, int GRAD, typename A>
__host__ __device__ inline Inputs<A> load_inputs(const bias_act_params& p, const Uniforms<A>& u, int64_t i) {
    Inputs<A> in;
    in.x = static_cast<A>(static_cast<const T*>(p.x)[i]);
    in.bias = A(0);
    in.xref = A(0);
    in.yref = A(0);
    in.dy = A(0);
    // Channel bias: needed by the forward pass and by the swish gradients.
    if ((GRAD == 0 || ACT == kBiasActSwish) && u.has_bias) {
        int64_t c;
        if (u.index32) {
            c = int64_t((uint32_t(i) / uint32_t(p.stride_dim)) % uint32_t(p.size_dim));
        } else {
            c = (i / p.stride_dim) % p.size_dim;
        }
        in.bias = static_cast<A>(static_cast<const T*>(p.b)[c]);
    }
    if constexpr (GRAD > 0) {
        if (p.yref != nullptr) in.yref = static_cast<A>(static_cast<const T*>(p.yref)[i]);
        if constexpr (ACT == kBiasActSwish) {
            if (p.xref != nullptr) in.xref = static_cast<A>(static_cast<const T*>(p.xref)[i]);
        }
        if constexpr (GRAD == 2 && ACT != kBiasActLinear && ACT != kBiasActRelu && ACT != kBiasActLrelu) {
            in.dy = static_cast<A>(static_cast<const T*>(p.dy)[i]);
        }
    }
    return in;
}

template <int ACT, int GRAD, typename A>
__host__ __device__ inline A compute_output(const Uniforms<A>& u, const Inputs<A>& in) {
    A out;
    if constexpr (GRAD == 0) {
        out = act_value<ACT>(in.x + in.bias, u.alpha) * u.gain;
        if (u.has_clamp) {
            // Comparisons (not fmin/fmax) so that NaN propagates like torch.clamp.
            out = out > u.clamp ? u.clamp : (out < -u.clamp ? -u.clamp : out);
        }
    } else {
        const A z = in.xref + in.bias;  // used by swish only
        const A t = in.yref * u.inv_gain;
        if constexpr (GRAD == 1) {
            out = in.x * u.gain * act_grad1<ACT>(z, t, u.alpha);
        } else if constexpr (ACT == kBiasActLinear || ACT == kBiasActRelu || ACT == kBiasActLrelu) {
            out = A(0);
        } else {
            out = in.x * in.dy * u.gain * act_grad2<ACT>(z, t);
        }
        if (u.has_clamp && m_abs(in.yref) >= u.clamp_mask) out = A(0);
    }
    return out;
}

// Processes the element at storage offset i (used by host-side checks of the kernel math).
template <typename T, int ACT, int GRAD, typename A>
__host__ __device__ inline void bias_act_element(const bias_act_params& p, const Uniforms<A>& u, int64_t i) {
    static_cast<T*>(p.y)[i] = static_cast<T>(compute_output<ACT, GRAD>(u, load_inputs<T, ACT, GRAD>(p, u, i)));
}

constexpr int kBlock = 128;        // threads per block
constexpr int kPerThread = 4;      // elements per thread and grid-stride step
constexpr int64_t kMaxBlocks = int64_t(1) << 30;

template <typename T, int ACT, int GRAD>
__global__ void __launch_bounds__(kBlock) bias_act_kernel(bias_act_params p) {
    using A = typename acc_type<T>::type;
    const Uniforms<A> u = make_uniforms<T, A>(p);
    T* y = static_cast<T*>(p.y);
    const int64_t n = p.numel;
    const int64_t step = int64_t(gridDim.x) * (kBlock * kPerThread);
    for (int64_t base = int64_t(blockIdx.x) * (kBlock * kPerThread) + threadIdx.x; base < n; base += step) {
        Inputs<A> in[kPerThread];
#pragma unroll
        for (int k = 0; k < kPerThread; ++k) {
            const int64_t i = base + int64_t(k) * kBlock;
            if (i < n) in[k] = load_inputs<T, ACT, GRAD>(p, u, i);
        }
#pragma unroll
        for (int k = 0; k < kPerThread; ++k) {
            const int64_t i = base + int64_t(k) * kBlock;
            if (i < n) y[i] = static_cast<T>(compute_output<ACT, GRAD>(u, in[k]));
        }
    }
}

}  // namespace bias_act_detail

// Kernel launches. OPS_HOST_EMULATION leaves them out: the CPU test harness in
// tests/test_cuda_build.py includes this file to run the per-thread code above on the host.
#ifndef OPS_HOST_EMULATION

namespace bias_act_detail {

template <typename T, int ACT>
cudaError_t launch_act(const bias_act_params& p, dim3 grid, cudaStream_t stream) {
    switch (p.grad) {
        case 0: bias_act_kernel<T, ACT, 0><<<grid, kBlock, 0, stream>>>(p); break;
        case 1: bias_act_kernel<T, ACT, 1><<<grid, kBlock, 0, stream>>>(p); break;
        case 2: bias_act_kernel<T, ACT, 2><<<grid, kBlock, 0, stream>>>(p); break;
        default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

}  // namespace bias_act_detail

template <typename T>
cudaError_t bias_act_launch(const bias_act_params& p, cudaStream_t stream) {
    using namespace bias_act_detail;
    if (p.numel <= 0) return cudaSuccess;
    if (p.size_dim < 1 || p.stride_dim < 1) return cudaErrorInvalidValue;
    const int64_t per_block = int64_t(kBlock) * kPerThread;
    const int64_t blocks = std::min((p.numel + per_block - 1) / per_block, kMaxBlocks);
    const dim3 grid(static_cast<unsigned int>(blocks));
    switch (p.act) {
        case kBiasActLinear: return launch_act<T, kBiasActLinear>(p, grid, stream);
        case kBiasActRelu: return launch_act<T, kBiasActRelu>(p, grid, stream);
        case kBiasActLrelu: return launch_act<T, kBiasActLrelu>(p, grid, stream);
        case kBiasActTanh: return launch_act<T, kBiasActTanh>(p, grid, stream);
        case kBiasActSigmoid: return launch_act<T, kBiasActSigmoid>(p, grid, stream);
        case kBiasActElu: return launch_act<T, kBiasActElu>(p, grid, stream);
        case kBiasActSelu: return launch_act<T, kBiasActSelu>(p, grid, stream);
        case kBiasActSoftplus: return launch_act<T, kBiasActSoftplus>(p, grid, stream);
        case kBiasActSwish: return launch_act<T, kBiasActSwish>(p, grid, stream);
        default: return cudaErrorInvalidValue;
    }
}

template cudaError_t bias_act_launch<c10::Half>(const bias_act_params& p, cudaStream_t stream);
template cudaError_t bias_act_launch<float>(const bias_act_params& p, cudaStream_t stream);
template cudaError_t bias_act_launch<double>(const bias_act_params& p, cudaStream_t stream);

#endif  // OPS_HOST_EMULATION
