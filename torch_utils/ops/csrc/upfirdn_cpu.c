/* CPU kernel of upfirdn2d's fast path (torch_utils/ops/upfirdn2d.py) for separable filters: one 1-D pass along
 * one axis of x viewed as [outer, n_in, inner], run once along the width (inner = 1) and once along the height.
 *
 * Along the axis, with `taps` in correlation order (the caller flips them for a true convolution):
 *
 *     y[o] = sum_j taps[j] * u[o * down + j - pad0],    u[p] = x[p / up] where p >= 0, p % up == 0, p / up < n_in,
 *                                                              else 0
 *
 * i.e. zero insertion, padding (negative: cropping), filtering and decimation in one pass; taps are summed in
 * order j = 0, 1, ... (the compiler may fuse multiply-adds: the result need only agree to rounding). Along the
 * height (inner > 1) every output row is a weighted sum of a few input rows, a loop over contiguous memory. Along the width each row is first laid out zero-inserted and padded in a per-thread
 * scratch row when upsampling, so the filter is a sum of shifted contiguous slices (then every `down`-th value is
 * kept); without upsampling the row is read directly.
 *
 * Called through ctypes; rows are split between `nthreads` OpenMP threads of the libgomp PyTorch has loaded, small
 * inputs run on the calling thread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int bigan_kernel_abi(void) { return 1; }

#define MAX_TAPS 64
#define PARALLEL_MIN 32768 /* output elements below which one thread is faster */

#define DEFINE_KERNELS(T, SUFFIX)                                                                                   \
    /* Along the width without upsampling: output o reads x[o * down - pad0 + j]; the outputs whose taps all fall  \
       inside the row are a sum of shifted slices, the few at the edges check their bounds. */                     \
    static void width_row_direct_##SUFFIX(const T *xr, T *yr, int64_t n_in, int64_t n_out, int down, int64_t pad0, \
                                          const T *taps, int ntaps)                                                 \
    {                                                                                                               \
        int64_t o0 = pad0 > 0 ? (pad0 + down - 1) / down : 0; /* first o with o * down - pad0 >= 0 */              \
        int64_t o1 = n_in - ntaps + pad0 >= 0 ? (n_in - ntaps + pad0) / down + 1 : 0; /* last full one + 1 */      \
        if (o0 > n_out)                                                                                             \
            o0 = n_out;                                                                                             \
        if (o1 > n_out)                                                                                             \
            o1 = n_out;                                                                                             \
        if (o1 < o0)                                                                                                \
            o1 = o0;                                                                                                \
        for (int64_t o = 0; o < n_out; o++) {                                                                       \
            if (o == o0 && o1 > o0) { /* skip the interior */                                                      \
                o = o1 - 1;                                                                                         \
                continue;                                                                                           \
            }                                                                                                       \
            T acc = 0;                                                                                              \
            for (int j = 0; j < ntaps; j++) {                                                                       \
                const int64_t p = o * down - pad0 + j;                                                              \
                if (p >= 0 && p < n_in)                                                                             \
                    acc = acc + taps[j] * xr[p];                                                                    \
            }                                                                                                       \
            yr[o] = acc;                                                                                            \
        }                                                                                                           \
        if (o1 <= o0)                                                                                               \
            return;                                                                                                 \
        const T *base = xr + o0 * down - pad0;                                                                      \
        T *out = yr + o0;                                                                                           \
        const int64_t m = o1 - o0;                                                                                  \
        if (down == 1) {                                                                                            \
            for (int64_t i = 0; i < m; i++)                                                                         \
                out[i] = taps[0] * base[i];                                                                         \
            for (int j = 1; j < ntaps; j++)                                                                         \
                for (int64_t i = 0; i < m; i++)                                                                     \
                    out[i] = out[i] + taps[j] * base[i + j];                                                        \
        } else {                                                                                                    \
            for (int64_t i = 0; i < m; i++) {                                                                       \
                T acc = 0;                                                                                          \
                for (int j = 0; j < ntaps; j++)                                                                     \
                    acc = acc + taps[j] * base[i * down + j];                                                       \
                out[i] = acc;                                                                                       \
            }                                                                                                       \
        }                                                                                                           \
    }                                                                                                               \
                                                                                                                    \
    /* Along the width: rows of n_in samples, each to n_out samples. With upsampling, each row is first laid out    \
       zero-inserted and padded in a per-thread scratch row. */                                                     \
    static int width_pass_##SUFFIX(const T *x, T *y, int64_t rows, int64_t n_in, int64_t n_out, int up, int down, \
                                   int64_t pad0, const T *taps, int ntaps, int nthreads)                            \
    {                                                                                                               \
        const int threads = rows * n_out >= PARALLEL_MIN && nthreads > 1 ? nthreads : 1;                           \
        if (up == 1) {                                                                                              \
            _Pragma("omp parallel for schedule(static) num_threads(threads) if(threads > 1)")                       \
            for (int64_t r = 0; r < rows; r++)                                                                      \
                width_row_direct_##SUFFIX(x + r * n_in, y + r * n_out, n_in, n_out, down, pad0, taps, ntaps);       \
            return 0;                                                                                               \
        }                                                                                                           \
        /* Full-rate positions 0 .. span-1 are needed; position p reads scratch[p .. p + ntaps - 1]. */             \
        const int64_t span = (n_out - 1) * down + 1;                                                                \
        const int64_t slen = span + ntaps - 1;                                                                      \
        int failed = 0;                                                                                             \
        _Pragma("omp parallel num_threads(threads) if(threads > 1)")                                                \
        {                                                                                                           \
            T *scratch = (T *)malloc(sizeof(T) * (size_t)(slen + span));                                            \
            T *full = scratch + slen;                                                                               \
            if (!scratch) {                                                                                         \
                _Pragma("omp atomic write") failed = 1;                                                             \
            } else {                                                                                                \
                _Pragma("omp for schedule(static)")                                                                 \
                for (int64_t r = 0; r < rows; r++) {                                                                \
                    const T *xr = x + r * n_in;                                                                     \
                    memset(scratch, 0, sizeof(T) * (size_t)slen);                                                   \
                    /* scratch[q] = u[q - pad0]: the input sample i lands at q = i * up + pad0 */                   \
                    for (int64_t i = 0; i < n_in; i++) {                                                            \
                        const int64_t q = i * up + pad0;                                                            \
                        if (q >= 0 && q < slen)                                                                     \
                            scratch[q] = xr[i];                                                                     \
                    }                                                                                               \
                    T *out = down == 1 ? y + r * n_out : full;                                                      \
                    for (int64_t p = 0; p < span; p++)                                                              \
                        out[p] = taps[0] * scratch[p];                                                              \
                    for (int j = 1; j < ntaps; j++) {                                                               \
                        const T t = taps[j];                                                                        \
                        const T *s = scratch + j;                                                                   \
                        for (int64_t p = 0; p < span; p++)                                                          \
                            out[p] = out[p] + t * s[p];                                                             \
                    }                                                                                               \
                    if (down != 1) {                                                                                \
                        T *yr = y + r * n_out;                                                                      \
                        for (int64_t o = 0; o < n_out; o++)                                                         \
                            yr[o] = full[o * down];                                                                 \
                    }                                                                                               \
                }                                                                                                   \
                free(scratch);                                                                                      \
            }                                                                                                       \
        }                                                                                                           \
        return failed ? 2 : 0;                                                                                      \
    }                                                                                                               \
                                                                                                                    \
    /* Along the height: planes of n_in rows of `inner` samples, each to n_out rows. */                             \
    static int height_pass_##SUFFIX(const T *x, T *y, int64_t planes, int64_t n_in, int64_t inner, int64_t n_out,   \
                                    int up, int down, int64_t pad0, const T *taps, int ntaps, int nthreads)         \
    {                                                                                                               \
        const int64_t tasks = planes * n_out;                                                                       \
        const int threads = tasks * inner >= PARALLEL_MIN && nthreads > 1 ? nthreads : 1;                          \
        _Pragma("omp parallel for schedule(static) num_threads(threads) if(threads > 1)")                           \
        for (int64_t task = 0; task < tasks; task++) {                                                              \
            const int64_t plane = task / n_out, o = task % n_out;                                                   \
            const T *xp = x + plane * n_in * inner;                                                                 \
            T *yr = y + task * inner;                                                                               \
            int first = 1;                                                                                          \
            for (int j = 0; j < ntaps; j++) {                                                                       \
                const int64_t p = o * down + j - pad0;                                                              \
                if (p < 0 || p % up != 0 || p / up >= n_in)                                                         \
                    continue;                                                                                       \
                const T t = taps[j];                                                                                \
                const T *xr = xp + (p / up) * inner;                                                                \
                if (first)                                                                                          \
                    for (int64_t i = 0; i < inner; i++)                                                             \
                        yr[i] = t * xr[i];                                                                          \
                else                                                                                                \
                    for (int64_t i = 0; i < inner; i++)                                                             \
                        yr[i] = yr[i] + t * xr[i];                                                                  \
                first = 0;                                                                                          \
            }                                                                                                       \
            if (first)                                                                                              \
                memset(yr, 0, sizeof(T) * (size_t)inner);                                                           \
        }                                                                                                           \
        return 0;                                                                                                   \
    }                                                                                                               \
                                                                                                                    \
    /* x [outer, n_in, inner] -> y [outer, n_out, inner]; taps given in double, applied in T. */                    \
    int bigan_upfirdn1d_##SUFFIX(const T *x, T *y, int64_t outer, int64_t n_in, int64_t inner, int64_t n_out,       \
                                 int up, int down, int64_t pad0, const double *taps, int ntaps, int nthreads)       \
    {                                                                                                               \
        if (outer < 0 || n_in < 1 || inner < 1 || n_out < 1 || up < 1 || down < 1 || ntaps < 1                    \
            || ntaps > MAX_TAPS)                                                                                    \
            return 1;                                                                                               \
        T t[MAX_TAPS];                                                                                              \
        for (int j = 0; j < ntaps; j++)                                                                             \
            t[j] = (T)taps[j];                                                                                      \
        if (inner == 1)                                                                                             \
            return width_pass_##SUFFIX(x, y, outer, n_in, n_out, up, down, pad0, t, ntaps, nthreads);              \
        return height_pass_##SUFFIX(x, y, outer, n_in, inner, n_out, up, down, pad0, t, ntaps, nthreads);           \
    }

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
