/* CPU kernels of bias_act's fast path (torch_utils/ops/bias_act.py) for the piecewise-linear activations.
 *
 * x is viewed as [outer, C, inner] (C the bias dimension). The forward pass is, per element, in one pass:
 *
 *     y = clamp(act(x + b[c]) * gain, -clamp, clamp)       act: linear, relu, or lrelu with slope alpha
 *
 * with the reference's operations in the reference's order, so the result is bitwise the reference's (the build
 * uses -ffp-contract=off: no fused multiply-adds). The gradient pass needs only the output y: for gain > 0 and
 * alpha >= 0 (the caller checks), y > 0 exactly where x + b > 0, and |y| < clamp exactly where the clamp passed its
 * input through, so
 *
 *     dx = (clamp >= 0 and |y| >= clamp) ? 0 : act'(y) applied to (dy * gain)
 *
 * again in the reference's order (dy * gain, then the slope). It is linear in dy, so the second-order gradient is
 * this same pass on the incoming gradient. Optionally the pass also sums dx per channel (the bias gradient,
 * accumulated in double). Both passes may run in place (y == x, dx == dy).
 *
 * Called through ctypes. Large tensors are split between `nthreads` OpenMP threads of the libgomp that PyTorch has
 * loaded; small ones run on the calling thread (a parallel region costs more than they do).
 */
#include <stdint.h>
#include <stdlib.h>

int bigan_kernel_abi(void) { return 2; }

enum { ACT_LINEAR = 0, ACT_RELU = 1, ACT_LRELU = 2 };

#define PARALLEL_MIN 32768 /* elements below which one thread is faster */

#define DEFINE_KERNELS(T, SUFFIX)                                                                                   \
    static void fwd_row_##SUFFIX(const T *x, T *y, int64_t n, T bias, int act, T alpha, T gain, int has_clamp,      \
                                 T clamp)                                                                           \
    {                                                                                                               \
        for (int64_t i = 0; i < n; i++) {                                                                           \
            T v = x[i] + bias;                                                                                      \
            if (act == ACT_RELU)                                                                                    \
                v = v > 0 ? v : 0;                                                                                  \
            else if (act == ACT_LRELU)                                                                              \
                v = v > 0 ? v : v * alpha;                                                                          \
            v = v * gain;                                                                                           \
            if (has_clamp)                                                                                          \
                v = v < -clamp ? -clamp : (v > clamp ? clamp : v);                                                  \
            y[i] = v;                                                                                               \
        }                                                                                                           \
    }                                                                                                               \
                                                                                                                    \
    /* dx for one row; returns its sum when `sum` is set (a second pass over the row, still in cache, in eight     \
       partial sums so that it vectorises without reassociating anything the compiler may not). */                 \
    static double grad_row_##SUFFIX(const T *dy, const T *y, T *dx, int64_t n, int act, T alpha, T gain,            \
                                    int has_clamp, T clamp, int sum)                                                \
    {                                                                                                               \
        for (int64_t i = 0; i < n; i++) {                                                                           \
            T yi = y[i];                                                                                            \
            T g = dy[i] * gain;                                                                                     \
            if (act == ACT_RELU)                                                                                    \
                g = yi > 0 ? g : 0;                                                                                 \
            else if (act == ACT_LRELU)                                                                              \
                g = yi > 0 ? g : g * alpha;                                                                         \
            if (has_clamp)                                                                                          \
                g = (yi <= -clamp || yi >= clamp) ? 0 : g;                                                          \
            dx[i] = g;                                                                                              \
        }                                                                                                           \
        if (!sum)                                                                                                   \
            return 0;                                                                                               \
        double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                                  \
        int64_t i = 0;                                                                                              \
        for (; i + 8 <= n; i += 8)                                                                                  \
            for (int k = 0; k < 8; k++)                                                                             \
                part[k] += (double)dx[i + k];                                                                       \
        for (; i < n; i++)                                                                                          \
            part[0] += (double)dx[i];                                                                               \
        return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));          \
    }                                                                                                               \
                                                                                                                    \
    /* The row loops are specialised per activation (and clamp) so each inner loop has no branches to vectorise. */ \
    static void fwd_rows_##SUFFIX(const T *x, T *y, int64_t n, T bias, int act, T alpha, T gain, int has_clamp,     \
                                  T clamp)                                                                          \
    {                                                                                                               \
        if (act == ACT_LINEAR)                                                                                      \
            has_clamp ? fwd_row_##SUFFIX(x, y, n, bias, ACT_LINEAR, alpha, gain, 1, clamp)                          \
                      : fwd_row_##SUFFIX(x, y, n, bias, ACT_LINEAR, alpha, gain, 0, clamp);                         \
        else if (act == ACT_RELU)                                                                                   \
            has_clamp ? fwd_row_##SUFFIX(x, y, n, bias, ACT_RELU, alpha, gain, 1, clamp)                            \
                      : fwd_row_##SUFFIX(x, y, n, bias, ACT_RELU, alpha, gain, 0, clamp);                           \
        else                                                                                                        \
            has_clamp ? fwd_row_##SUFFIX(x, y, n, bias, ACT_LRELU, alpha, gain, 1, clamp)                           \
                      : fwd_row_##SUFFIX(x, y, n, bias, ACT_LRELU, alpha, gain, 0, clamp);                          \
    }                                                                                                               \
                                                                                                                    \
    static double grad_rows_##SUFFIX(const T *dy, const T *y, T *dx, int64_t n, int act, T alpha, T gain,           \
                                     int has_clamp, T clamp, int sum)                                               \
    {                                                                                                               \
        if (act == ACT_LINEAR)                                                                                      \
            return has_clamp ? grad_row_##SUFFIX(dy, y, dx, n, ACT_LINEAR, alpha, gain, 1, clamp, sum)              \
                             : grad_row_##SUFFIX(dy, y, dx, n, ACT_LINEAR, alpha, gain, 0, clamp, sum);             \
        if (act == ACT_RELU)                                                                                        \
            return has_clamp ? grad_row_##SUFFIX(dy, y, dx, n, ACT_RELU, alpha, gain, 1, clamp, sum)                \
                             : grad_row_##SUFFIX(dy, y, dx, n, ACT_RELU, alpha, gain, 0, clamp, sum);               \
        return has_clamp ? grad_row_##SUFFIX(dy, y, dx, n, ACT_LRELU, alpha, gain, 1, clamp, sum)                   \
                         : grad_row_##SUFFIX(dy, y, dx, n, ACT_LRELU, alpha, gain, 0, clamp, sum);                  \
    }                                                                                                               \
                                                                                                                    \
    int bigan_bias_act_fwd_##SUFFIX(const T *x, const T *b, T *y, int64_t outer, int64_t channels, int64_t inner,    \
                                    int act, double alpha, double gain, double clamp, int nthreads)                 \
    {                                                                                                               \
        if (outer < 0 || channels < 1 || inner < 1 || act < ACT_LINEAR || act > ACT_LRELU)                          \
            return 1;                                                                                               \
        const int has_clamp = clamp >= 0;                                                                           \
        const T a = (T)alpha, g = (T)gain, c = (T)clamp;                                                            \
        const int64_t rows = outer * channels, total = rows * inner;                                                \
        const int threads = total >= PARALLEL_MIN && nthreads > 1 ? nthreads : 1;                                   \
        if (inner == 1) { /* [outer, C]: one row per outer index, the bias varying along it */                      \
            _Pragma("omp parallel for schedule(static) num_threads(threads) if(threads > 1)")                       \
            for (int64_t o = 0; o < outer; o++)                                                                     \
                for (int64_t ch = 0; ch < channels; ch++)                                                           \
                    fwd_rows_##SUFFIX(x + o * channels + ch, y + o * channels + ch, 1, b ? b[ch] : 0, act, a, g,    \
                                      has_clamp, c);                                                                \
            return 0;                                                                                               \
        }                                                                                                           \
        _Pragma("omp parallel for schedule(static) num_threads(threads) if(threads > 1)")                           \
        for (int64_t r = 0; r < rows; r++)                                                                          \
            fwd_rows_##SUFFIX(x + r * inner, y + r * inner, inner, b ? b[r % channels] : 0, act, a, g, has_clamp,   \
                              c);                                                                                   \
        return 0;                                                                                                   \
    }                                                                                                               \
                                                                                                                    \
    /* db (optional, [C]) receives the per-channel sums of dx, accumulated in double. */                            \
    int bigan_bias_act_grad_##SUFFIX(const T *dy, const T *y, T *dx, T *db, int64_t outer, int64_t channels,         \
                                     int64_t inner, int act, double alpha, double gain, double clamp, int nthreads) \
    {                                                                                                               \
        if (outer < 0 || channels < 1 || inner < 1 || act < ACT_LINEAR || act > ACT_LRELU)                          \
            return 1;                                                                                               \
        const int has_clamp = clamp >= 0;                                                                           \
        const T a = (T)alpha, g = (T)gain, c = (T)clamp;                                                            \
        const int64_t total = outer * channels * inner;                                                             \
        const int threads = total >= PARALLEL_MIN && nthreads > 1 ? nthreads : 1;                                   \
        if (!db) {                                                                                                  \
            const int64_t rows = outer * channels;                                                                  \
            _Pragma("omp parallel for schedule(static) num_threads(threads) if(threads > 1)")                       \
            for (int64_t r = 0; r < rows; r++)                                                                      \
                grad_rows_##SUFFIX(dy + r * inner, y + r * inner, dx + r * inner, inner, act, a, g, has_clamp, c,   \
                                   0);                                                                              \
            return 0;                                                                                               \
        }                                                                                                           \
        /* With the bias gradient each thread owns whole channels, so the sums need no reduction between threads. */ \
        _Pragma("omp parallel for schedule(static) num_threads(threads) if(threads > 1 && channels > 1)")           \
        for (int64_t ch = 0; ch < channels; ch++) {                                                                 \
            double total_ch = 0;                                                                                    \
            for (int64_t o = 0; o < outer; o++) {                                                                   \
                const int64_t at = (o * channels + ch) * inner;                                                     \
                total_ch += grad_rows_##SUFFIX(dy + at, y + at, dx + at, inner, act, a, g, has_clamp, c, 1);        \
            }                                                                                                       \
            db[ch] = (T)total_ch;                                                                                   \
        }                                                                                                           \
        return 0;                                                                                                   \
    }

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
