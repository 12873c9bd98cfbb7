/* CPU kernel of upfirdn2d's fast path (torch_utils/ops/upfirdn2d.py) for separable filters: for each plane of
 * x [planes, h, w], a 1-D pass along the width into a per-thread buffer (cache resident), then one along the height
 * from it into y.
 *
 * Along each axis, with `taps` in correlation order (the caller flips them for a true convolution):
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
 * Called through ctypes; planes are split between `nthreads` OpenMP threads of the libgomp PyTorch has loaded,
 * small inputs run on the calling thread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int bigan_kernel_abi(void) { return 2; }

#define MAX_TAPS 64
#define PARALLEL_MIN 32768 /* output elements below which one thread is faster */

#define DEFINE_KERNELS(T, SUFFIX)                                                                                   \
    /* Output o of a row without upsampling, checking each tap against the row's bounds (the few edge outputs). */   \
    static inline T width_edge_##SUFFIX(const T *xr, int64_t n_in, int64_t o, int down, int64_t pad0,              \
                                        const T *taps, int ntaps)                                                  \
    {                                                                                                               \
        T acc = 0;                                                                                                  \
        for (int j = 0; j < ntaps; j++) {                                                                           \
            const int64_t p = o * down - pad0 + j;                                                                  \
            if (p >= 0 && p < n_in)                                                                                 \
                acc = acc + taps[j] * xr[p];                                                                        \
        }                                                                                                           \
        return acc;                                                                                                 \
    }                                                                                                               \
                                                                                                                    \
    /* Along the width without upsampling: output o reads x[o * down - pad0 + j]; the outputs o0 .. o1-1, whose taps \
       all fall inside the row, are a sum of shifted slices, the ones before and after check their bounds. */       \
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
        for (int64_t o = 0; o < o0; o++)                                                                            \
            yr[o] = width_edge_##SUFFIX(xr, n_in, o, down, pad0, taps, ntaps);                                      \
        for (int64_t o = o1; o < n_out; o++)                                                                        \
            yr[o] = width_edge_##SUFFIX(xr, n_in, o, down, pad0, taps, ntaps);                                      \
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
    /* One row along the width, n_in -> n_out samples. With upsampling the row is first laid out zero-inserted and \
       padded in `scratch` (2 * span + ntaps values, sized by the caller), so the filter is a sum of shifted      \
       slices. */                                                                                                   \
    static void width_row_##SUFFIX(const T *xr, T *yr, int64_t n_in, int64_t n_out, int up, int down, int64_t pad0, \
                                   const T *taps, int ntaps, T *scratch)                                            \
    {                                                                                                               \
        if (up == 1) {                                                                                              \
            width_row_direct_##SUFFIX(xr, yr, n_in, n_out, down, pad0, taps, ntaps);                                \
            return;                                                                                                 \
        }                                                                                                           \
        /* Full-rate positions 0 .. span-1 are needed; position p reads scratch[p .. p + ntaps - 1]. */             \
        const int64_t span = (n_out - 1) * down + 1, slen = span + ntaps - 1;                                       \
        T *full = scratch + slen;                                                                                   \
        memset(scratch, 0, sizeof(T) * (size_t)slen);                                                               \
        for (int64_t i = 0; i < n_in; i++) { /* input sample i lands at scratch[i * up + pad0] */                   \
            const int64_t q = i * up + pad0;                                                                        \
            if (q >= 0 && q < slen)                                                                                 \
                scratch[q] = xr[i];                                                                                 \
        }                                                                                                           \
        T *out = down == 1 ? yr : full;                                                                             \
        for (int64_t p = 0; p < span; p++)                                                                          \
            out[p] = taps[0] * scratch[p];                                                                          \
        for (int j = 1; j < ntaps; j++) {                                                                           \
            const T t = taps[j];                                                                                    \
            const T *s = scratch + j;                                                                               \
            for (int64_t p = 0; p < span; p++)                                                                      \
                out[p] = out[p] + t * s[p];                                                                         \
        }                                                                                                           \
        if (down != 1)                                                                                              \
            for (int64_t o = 0; o < n_out; o++)                                                                     \
                yr[o] = full[o * down];                                                                             \
    }                                                                                                               \
                                                                                                                    \
    /* Output row o along the height: a weighted sum of a few rows of `src` ([n_in, inner], rows `stride` apart). */ \
    static void height_row_##SUFFIX(const T *src, int64_t stride, T *yr, int64_t n_in, int64_t inner, int64_t o,    \
                                    int up, int down, int64_t pad0, const T *taps, int ntaps)                       \
    {                                                                                                               \
        int first = 1;                                                                                              \
        for (int j = 0; j < ntaps; j++) {                                                                           \
            const int64_t p = o * down + j - pad0;                                                                  \
            if (p < 0 || p % up != 0 || p / up >= n_in)                                                             \
                continue;                                                                                           \
            const T t = taps[j];                                                                                    \
            const T *xr = src + (p / up) * stride;                                                                  \
            if (first)                                                                                              \
                for (int64_t i = 0; i < inner; i++)                                                                 \
                    yr[i] = t * xr[i];                                                                              \
            else                                                                                                    \
                for (int64_t i = 0; i < inner; i++)                                                                 \
                    yr[i] = yr[i] + t * xr[i];                                                                      \
            first = 0;                                                                                              \
        }                                                                                                           \
        if (first)                                                                                                  \
            memset(yr, 0, sizeof(T) * (size_t)inner);                                                               \
    }                                                                                                               \
                                                                                                                    \
    /* x [batch, channels, h, w] (strides sn, sc, sh and 1, so a cropped view needs no copy) -> y [batch, channels, \
       h_out, w_out], contiguous, plane by plane: the width pass of a plane goes to a per-thread buffer that stays  \
       in cache, the height pass reads it from there. An axis with do_* = 0 is left alone. Taps are given in double \
       and applied in T. */                                                                                         \
    int bigan_upfirdn2d_##SUFFIX(const T *x, T *y, int64_t batch, int64_t channels, int64_t sn, int64_t sc,          \
                                 int64_t sh, int64_t h, int64_t w, int64_t h_out,                                   \
                                 int64_t w_out, int upx, int upy, int downx, int downy, int64_t padx0,               \
                                 int64_t pady0, const double *taps_x, int ntx, const double *taps_y, int nty,         \
                                 int do_x, int do_y, int nthreads)                                                  \
    {                                                                                                               \
        const int64_t planes = batch * channels;                                                                    \
        if (batch < 0 || channels < 1 || h < 1 || w < 1 || h_out < 1 || w_out < 1 || upx < 1 || upy < 1 || downx < 1 || downy < 1 \
            || ntx < 1 || ntx > MAX_TAPS || nty < 1 || nty > MAX_TAPS || (!do_x && w_out != w)                      \
            || (!do_y && h_out != h))                                                                               \
            return 1;                                                                                               \
        T tx[MAX_TAPS], ty[MAX_TAPS];                                                                               \
        for (int j = 0; j < ntx; j++)                                                                               \
            tx[j] = (T)taps_x[j];                                                                                   \
        for (int j = 0; j < nty; j++)                                                                               \
            ty[j] = (T)taps_y[j];                                                                                   \
        const int64_t row_scratch = upx > 1 ? 2 * ((w_out - 1) * downx + 1) + ntx : 0;                             \
        const int64_t mid_size = do_x && do_y ? h * w_out : 0;                                                      \
        int threads = planes * h_out * w_out >= PARALLEL_MIN && nthreads > 1 ? nthreads : 1;                        \
        if (threads > planes)                                                                                       \
            threads = planes > 0 ? (int)planes : 1;                                                                 \
        int failed = 0;                                                                                             \
        _Pragma("omp parallel num_threads(threads) if(threads > 1)")                                                \
        {                                                                                                           \
            T *buffer = (T *)malloc(sizeof(T) * (size_t)(mid_size + row_scratch + 1));                              \
            if (!buffer) {                                                                                          \
                _Pragma("omp atomic write") failed = 1;                                                             \
            } else {                                                                                                \
                T *mid = buffer, *scratch = buffer + mid_size;                                                      \
                _Pragma("omp for schedule(static)")                                                                 \
                for (int64_t plane = 0; plane < planes; plane++) {                                                  \
                    const T *xp = x + (plane / channels) * sn + (plane % channels) * sc;                             \
                    T *yp = y + plane * h_out * w_out;                                                              \
                    const T *src = xp;                                                                              \
                    int64_t src_stride = sh;                                                                        \
                    if (do_x) {                                                                                     \
                        T *dst = do_y ? mid : yp;                                                                   \
                        for (int64_t r = 0; r < h; r++)                                                             \
                            width_row_##SUFFIX(xp + r * sh, dst + r * w_out, w, w_out, upx, downx, padx0, tx, ntx,  \
                                               scratch);                                                            \
                        src = dst;                                                                                  \
                        src_stride = w_out;                                                                         \
                    }                                                                                               \
                    if (do_y)                                                                                       \
                        for (int64_t o = 0; o < h_out; o++)                                                         \
                            height_row_##SUFFIX(src, src_stride, yp + o * w_out, h, w_out, o, upy, downy, pady0, ty, \
                                                nty);                                                               \
                }                                                                                                   \
                free(buffer);                                                                                       \
            }                                                                                                       \
        }                                                                                                           \
        return failed ? 2 : 0;                                                                                      \
    }

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
