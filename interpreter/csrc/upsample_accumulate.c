/* CPU kernels of the fast mask-generator path (interpreter/projection.py).
 *
 * bigan_upsample_accumulate: fused bilinear/nearest upsampling + accumulation of several low-resolution maps into
 * one band of rows. For output rows y0 .. y0+rows-1 of an R x R image with h channels per pixel (pixel-major,
 * channels innermost):
 *
 *     out[y, x, :] = act( [out[y, x, :]] + [bias] + sum_k  wy0 * (wx0 * P_k[iy0, ix0, :] + wx1 * P_k[iy0, ix1, :])
 *                                                          + wy1 * (wx0 * P_k[iy1, ix0, :] + wx1 * P_k[iy1, ix1, :]) )
 *
 * The bracketed terms and the ReLU `act` are optional (`flags`, a null `bias`). P_k is [r_k, r_k, h] and (i0, i1, w0, w1)_k are the 1-D source taps of output coordinate y (or x) for
 * resolution r_k (the same along both axes: the maps are square). Per output row, every map is first blended along
 * y into a scratch row [r_k, h] (small, cache resident); the x blend then reads only those rows. The sum over all
 * maps is kept in registers per pixel, so the band is read and written once instead of once per map.
 *
 * bigan_transpose_into: a tiled channel-major -> pixel-major copy (for the maps at the output resolution).
 *
 * Called through ctypes from interpreter/upsample_kernel.py. Rows are split between `nthreads` OpenMP threads,
 * thread i using scratch + i * scratch_stride (at least sum_k r_k * h floats each). Built with -fopenmp, the
 * library binds to the libgomp that PyTorch has already loaded (same soname), so it shares PyTorch's thread team
 * instead of competing with it. Compiled for the machine it runs on; the AVX2/FMA path is used where the compiler
 * targets it, a plain C loop with the same arithmetic otherwise.
 */
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define BIGAN_AVX2 1
#endif

#define BIGAN_MAX_MAPS 64

int bigan_kernel_abi(void) { return 3; }

#define BIGAN_ACCUMULATE 1 /* add to what `out` holds (else start from zero) */
#define BIGAN_RELU 2       /* store max(0, sum) */

static void blend_y(float *restrict t, const float *restrict a, const float *restrict b, float wa, float wb,
                    int64_t n)
{
    int64_t c = 0;
#ifdef BIGAN_AVX2
    const __m256 va = _mm256_set1_ps(wa), vb = _mm256_set1_ps(wb);
    for (; c + 8 <= n; c += 8)
        _mm256_storeu_ps(t + c, _mm256_fmadd_ps(vb, _mm256_loadu_ps(b + c), _mm256_mul_ps(va, _mm256_loadu_ps(a + c))));
#endif
    for (; c < n; c++)
        t[c] = wa * a[c] + wb * b[c];
}

/* One output pixel: o[c] for c in [0, h), from the y-blended rows of every map in `scratch`. */
static void blend_x(float *restrict o, const float *restrict scratch, const int64_t *off, int64_t nmaps, int64_t h,
                    int64_t x, const int32_t *const *i0, const int32_t *const *i1, const float *const *w0,
                    const float *const *w1, const float *bias, int flags)
{
    const int accumulate = flags & BIGAN_ACCUMULATE, relu = flags & BIGAN_RELU;
    int64_t c = 0;
#ifdef BIGAN_AVX2
    const __m256 zero = _mm256_setzero_ps();
    for (; c + 64 <= h; c += 64) { /* 8 accumulators of 8 channels */
        __m256 acc[8];
        for (int j = 0; j < 8; j++) {
            acc[j] = accumulate ? _mm256_loadu_ps(o + c + 8 * j) : zero;
            if (bias)
                acc[j] = _mm256_add_ps(acc[j], _mm256_loadu_ps(bias + c + 8 * j));
        }
        for (int64_t k = 0; k < nmaps; k++) {
            const float *p = scratch + off[k] + (int64_t)i0[k][x] * h + c;
            const float *q = scratch + off[k] + (int64_t)i1[k][x] * h + c;
            const __m256 wa = _mm256_set1_ps(w0[k][x]), wb = _mm256_set1_ps(w1[k][x]);
            for (int j = 0; j < 8; j++)
                acc[j] = _mm256_fmadd_ps(wa, _mm256_loadu_ps(p + 8 * j),
                                         _mm256_fmadd_ps(wb, _mm256_loadu_ps(q + 8 * j), acc[j]));
        }
        for (int j = 0; j < 8; j++)
            _mm256_storeu_ps(o + c + 8 * j, relu ? _mm256_max_ps(acc[j], zero) : acc[j]);
    }
    for (; c + 8 <= h; c += 8) {
        __m256 acc = accumulate ? _mm256_loadu_ps(o + c) : zero;
        if (bias)
            acc = _mm256_add_ps(acc, _mm256_loadu_ps(bias + c));
        for (int64_t k = 0; k < nmaps; k++) {
            const float *p = scratch + off[k] + (int64_t)i0[k][x] * h + c;
            const float *q = scratch + off[k] + (int64_t)i1[k][x] * h + c;
            acc = _mm256_fmadd_ps(_mm256_set1_ps(w0[k][x]), _mm256_loadu_ps(p),
                                  _mm256_fmadd_ps(_mm256_set1_ps(w1[k][x]), _mm256_loadu_ps(q), acc));
        }
        _mm256_storeu_ps(o + c, relu ? _mm256_max_ps(acc, zero) : acc);
    }
#endif
    for (; c < h; c++) {
        float acc = accumulate ? o[c] : 0.0f;
        if (bias)
            acc += bias[c];
        for (int64_t k = 0; k < nmaps; k++) {
            const float *t = scratch + off[k];
            acc += w0[k][x] * t[(int64_t)i0[k][x] * h + c] + w1[k][x] * t[(int64_t)i1[k][x] * h + c];
        }
        o[c] = relu && acc < 0.0f ? 0.0f : acc;
    }
}

int bigan_upsample_accumulate(float *out, int64_t y0, int64_t rows, int64_t R, int64_t h, int64_t nmaps,
                              const float *const *P, const int64_t *res,
                              const int32_t *const *i0, const int32_t *const *i1,
                              const float *const *w0, const float *const *w1, const float *bias, int64_t flags,
                              float *scratch_all, int64_t scratch_stride, int64_t nthreads)
{
    int64_t off[BIGAN_MAX_MAPS];
    if (nmaps < 0 || nmaps > BIGAN_MAX_MAPS || h < 1 || R < 1 || rows < 0 || y0 < 0 || y0 + rows > R
        || nthreads < 1 || (flags & ~(int64_t)(BIGAN_ACCUMULATE | BIGAN_RELU)))
        return 1;
    int64_t total = 0;
    for (int64_t k = 0; k < nmaps; k++) {
        if (res[k] < 1)
            return 1;
        off[k] = total;
        total += res[k] * h;
    }
    if (scratch_stride < total)
        return 1;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads((int)(nthreads < rows ? nthreads : (rows > 0 ? rows : 1)))
#endif
    for (int64_t row = 0; row < rows; row++) {
#ifdef _OPENMP
        float *scratch = scratch_all + (int64_t)omp_get_thread_num() * scratch_stride;
#else
        float *scratch = scratch_all;
#endif
        const int64_t y = y0 + row;
        for (int64_t k = 0; k < nmaps; k++) {
            const int64_t rh = res[k] * h;
            blend_y(scratch + off[k], P[k] + (int64_t)i0[k][y] * rh, P[k] + (int64_t)i1[k][y] * rh,
                    w0[k][y], w1[k][y], rh);
        }
        float *o = out + row * R * h;
        for (int64_t x = 0; x < R; x++)
            blend_x(o + x * h, scratch, off, nmaps, h, x, i0, i1, w0, w1, bias, (int)flags);
    }
    return 0;
}

/* dst[n * ld + c] = src[c * N + n] for c < C, n < N: a channel-major map [C, N] into columns 0..C-1 of a
 * pixel-major matrix with row stride ld. Tiled so both sides stay in cache (PyTorch's strided copy does not). */
int bigan_transpose_into(const float *src, int64_t C, int64_t N, float *dst, int64_t ld, int64_t nthreads)
{
    if (C < 0 || N < 0 || ld < C || nthreads < 1)
        return 1;
    const int64_t TN = 64, TC = 16;
    const int64_t tiles = (N + TN - 1) / TN;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads((int)(nthreads < tiles ? nthreads : (tiles > 0 ? tiles : 1)))
#endif
    for (int64_t t = 0; t < tiles; t++) {
        const int64_t n0 = t * TN, n1 = n0 + TN < N ? n0 + TN : N;
        for (int64_t c0 = 0; c0 < C; c0 += TC) {
            const int64_t c1 = c0 + TC < C ? c0 + TC : C;
            for (int64_t n = n0; n < n1; n++)
                for (int64_t c = c0; c < c1; c++)
                    dst[n * ld + c] = src[c * N + n];
        }
    }
    return 0;
}
