/* Tile transforms of the Winograd F(2x2, 3x3) convolution on the CPU fast path (torch_utils/ops/winograd_cpu.py):
 * a 3x3, stride-1, zero-padding-1 correlation of x [N, C, H, W] with w [O, C, 3, 3] computed per 2x2 output tile as
 *
 *     y_tile = A^T [ (G w G^T) (.) (B^T d B) ] A,     d = the 4x4 input patch around the tile (zeros outside x),
 *
 * with the points 0, 1, -1 and infinity:
 *
 *     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
 *     A^T = [1 1 1 0; 0 1 -1 -1].
 *
 * The products over channels are 16 matrix products done by PyTorch; this file has the four linear maps around them,
 * each one pass over memory:
 *
 *     wino_in      x [N, C, H, W]  -> v [16, C, N * T]    (B^T d B of every tile; T = ceil(H/2) * ceil(W/2))
 *     wino_in_t    v               -> x                   (its adjoint: the input gradient, overlapping tiles summed)
 *     wino_out     m [16, O, N * T] -> y [N, O, H, W]     (A^T m A, cropped to H x W)
 *     wino_out_t   y               -> m                   (its adjoint: A y A^T of every tile's 2x2 gradient)
 *
 * Transform point t = 4 * i + j is i along the height and j along the width. Within a slab, tiles are laid out image
 * by image, then tile row, then tile column, so each image plane reads or writes 16 contiguous runs. All transform
 * coefficients are 0, +-1 (and 1/2 in G, applied in PyTorch), so the maps themselves add only the rounding of a few
 * additions. Planes are split between `nthreads` OpenMP threads of the libgomp PyTorch has loaded.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int bigan_kernel_abi(void) { return 1; }

#define PARALLEL_MIN 16384 /* elements per call below which one thread is faster */

/* The body shared by the four maps: the tile geometry, then `BODY` for every image plane (b, c), planes split
 * between threads, each with a scratch buffer of `SCRATCH` elements of T (an expression of the geometry). */
#define FOR_EACH_PLANE(T, SCRATCH, ...)                                                                             \
    if (batch < 1 || channels < 1 || h < 1 || w < 1)                                                                \
        return 1;                                                                                                   \
    const int64_t th = (h + 1) / 2, tw = (w + 1) / 2, tiles = th * tw, nt = batch * tiles;                           \
    const int64_t slab = channels * nt, len = 2 * tw + 2, planes = batch * channels;                               \
    (void)slab;                                                                                                     \
    (void)len;                                                                                                      \
    const int threads = planes * h * w >= PARALLEL_MIN && nthreads > 1 ? nthreads : 1;                              \
    int failed = 0;                                                                                                 \
    _Pragma("omp parallel num_threads(threads) if(threads > 1)")                                                    \
    {                                                                                                               \
        T *scratch = (T *)malloc(sizeof(T) * (size_t)(SCRATCH));                                                    \
        if (!scratch) {                                                                                             \
            _Pragma("omp atomic write") failed = 1;                                                                 \
        } else {                                                                                                    \
            _Pragma("omp for schedule(static)")                                                                     \
            for (int64_t plane = 0; plane < planes; plane++) {                                                      \
                const int64_t b = plane / channels, c = plane % channels;                                           \
                __VA_ARGS__                                                                                         \
            }                                                                                                       \
            free(scratch);                                                                                          \
        }                                                                                                           \
    }                                                                                                               \
    return failed ? 2 : 0;

/* wino_out_t's points (i, j) for one j: the width-transformed rows r0, r1 (expressions in tx) along the height. */
#define OUT_T_COLUMN(T, J, R0, R1)                                                                                  \
    {                                                                                                               \
        T *o0 = mp + (0 + J) * slab + ty * tw, *o1 = mp + (4 + J) * slab + ty * tw;                                \
        T *o2 = mp + (8 + J) * slab + ty * tw, *o3 = mp + (12 + J) * slab + ty * tw;                               \
        for (int64_t tx = 0; tx < tw; tx++) {                                                                       \
            const T r0 = R0, r1 = R1;                                                                               \
            o0[tx] = r0;                                                                                            \
            o1[tx] = r0 + r1;                                                                                       \
            o2[tx] = r0 - r1;                                                                                       \
            o3[tx] = -r1;                                                                                           \
        }                                                                                                           \
    }

#define DEFINE_KERNELS(T, SUFFIX)                                                                                   \
    /* x [batch, channels, h, w] (strides sn, sc, sh, 1) -> v [16, channels, batch * tiles]. The scratch holds the  \
       four padded input rows of a tile row combined along the height (B^T d), column col at 1 + col. */            \
    int bigan_wino_in_##SUFFIX(const T *x, T *v, int64_t batch, int64_t channels, int64_t sn, int64_t sc,           \
                               int64_t sh, int64_t h, int64_t w, int nthreads)                                      \
    {                                                                                                               \
        FOR_EACH_PLANE(T, 4 * len, {                                                                                \
            const T *xp = x + b * sn + c * sc;                                                                      \
            T *vp = v + c * nt + b * tiles;                                                                         \
            for (int64_t ty = 0; ty < th; ty++) {                                                                   \
                const T *r[4];                                                                                      \
                for (int k = 0; k < 4; k++) {                                                                       \
                    const int64_t row = 2 * ty - 1 + k;                                                             \
                    r[k] = row >= 0 && row < h ? xp + row * sh : NULL;                                              \
                }                                                                                                   \
                for (int i = 0; i < 4; i++)                                                                         \
                    scratch[i * len] = 0;                                                                           \
                for (int64_t col = 0; col < len - 1; col++) {                                                       \
                    const int in = col < w;                                                                         \
                    const T d0 = in && r[0] ? r[0][col] : 0, d1 = in && r[1] ? r[1][col] : 0;                       \
                    const T d2 = in && r[2] ? r[2][col] : 0, d3 = in && r[3] ? r[3][col] : 0;                       \
                    scratch[0 * len + 1 + col] = d0 - d2;                                                           \
                    scratch[1 * len + 1 + col] = d1 + d2;                                                           \
                    scratch[2 * len + 1 + col] = d2 - d1;                                                           \
                    scratch[3 * len + 1 + col] = d1 - d3;                                                           \
                }                                                                                                   \
                for (int i = 0; i < 4; i++) {                                                                       \
                    const T *s = scratch + i * len;                                                                 \
                    T *o0 = vp + (4 * i + 0) * slab + ty * tw, *o1 = vp + (4 * i + 1) * slab + ty * tw;             \
                    T *o2 = vp + (4 * i + 2) * slab + ty * tw, *o3 = vp + (4 * i + 3) * slab + ty * tw;             \
                    for (int64_t tx = 0; tx < tw; tx++) {                                                           \
                        const T d0 = s[2 * tx], d1 = s[2 * tx + 1], d2 = s[2 * tx + 2], d3 = s[2 * tx + 3];         \
                        o0[tx] = d0 - d2;                                                                           \
                        o1[tx] = d1 + d2;                                                                           \
                        o2[tx] = d2 - d1;                                                                           \
                        o3[tx] = d1 - d3;                                                                           \
                    }                                                                                               \
                }                                                                                                   \
            }                                                                                                       \
        })                                                                                                          \
    }                                                                                                               \
                                                                                                                    \
    /* The adjoint of wino_in: v [16, channels, batch * tiles] -> x [batch, channels, h, w], contiguous. Each tile's\
       B v B^T is summed into a zero-padded plane (the scratch's first (2 th + 2) rows of len; tiles overlap by two \
       rows and columns), whose interior is then copied out. Along a row, column 2u + e (e = 0, 1) takes tile u's   \
       value e and tile u - 1's value e + 2, so a row is written once, without read-modify-write between tiles. */  \
    int bigan_wino_in_t_##SUFFIX(const T *v, T *x, int64_t batch, int64_t channels, int64_t h, int64_t w,           \
                                 int nthreads)                                                                      \
    {                                                                                                               \
        FOR_EACH_PLANE(T, (2 * th + 2) * len + 20 * tw, {                                                           \
            T *buf = scratch, *e = scratch + (2 * th + 2) * len, *fk = e + 16 * tw;                                 \
            const T *vp = v + c * nt + b * tiles;                                                                   \
            memset(buf, 0, sizeof(T) * (size_t)((2 * th + 2) * len));                                               \
            for (int64_t ty = 0; ty < th; ty++) {                                                                   \
                /* e[i][l][tx]: row i of the B-adjoint along the width, column offset l of tile tx. */              \
                for (int i = 0; i < 4; i++) {                                                                       \
                    const T *a0 = vp + (4 * i + 0) * slab + ty * tw, *a1 = vp + (4 * i + 1) * slab + ty * tw;       \
                    const T *a2 = vp + (4 * i + 2) * slab + ty * tw, *a3 = vp + (4 * i + 3) * slab + ty * tw;       \
                    T *e0 = e + (4 * i + 0) * tw, *e1 = e + (4 * i + 1) * tw;                                       \
                    T *e2 = e + (4 * i + 2) * tw, *e3 = e + (4 * i + 3) * tw;                                       \
                    for (int64_t tx = 0; tx < tw; tx++) {                                                           \
                        e0[tx] = a0[tx];                                                                            \
                        e1[tx] = a1[tx] - a2[tx] + a3[tx];                                                          \
                        e2[tx] = a1[tx] + a2[tx] - a0[tx];                                                          \
                        e3[tx] = -a3[tx];                                                                           \
                    }                                                                                               \
                }                                                                                                   \
                /* Along the height: f_k = (B along i) of e for buffer row 2 ty + k, then column 2 u + par of that  \
                   row takes f_k at (par, tile u) and (par + 2, tile u - 1). */                                     \
                for (int k = 0; k < 4; k++) {                                                                       \
                    for (int l = 0; l < 4; l++) {                                                                   \
                        const T *g0 = e + (0 + l) * tw, *g1 = e + (4 + l) * tw;                                     \
                        const T *g2 = e + (8 + l) * tw, *g3 = e + (12 + l) * tw;                                    \
                        T *f = fk + l * tw;                                                                         \
                        if (k == 0)                                                                                 \
                            for (int64_t tx = 0; tx < tw; tx++)                                                     \
                                f[tx] = g0[tx];                                                                     \
                        else if (k == 1)                                                                            \
                            for (int64_t tx = 0; tx < tw; tx++)                                                     \
                                f[tx] = g1[tx] - g2[tx] + g3[tx];                                                   \
                        else if (k == 2)                                                                            \
                            for (int64_t tx = 0; tx < tw; tx++)                                                     \
                                f[tx] = g1[tx] + g2[tx] - g0[tx];                                                   \
                        else                                                                                        \
                            for (int64_t tx = 0; tx < tw; tx++)                                                     \
                                f[tx] = -g3[tx];                                                                    \
                    }                                                                                               \
                    T *row = buf + (2 * ty + k) * len;                                                              \
                    const T *f0 = fk, *f1 = fk + tw, *f2 = fk + 2 * tw, *f3 = fk + 3 * tw;                          \
                    row[0] += f0[0];                                                                                \
                    row[1] += f1[0];                                                                                \
                    for (int64_t u = 1; u < tw; u++) {                                                              \
                        row[2 * u] += f0[u] + f2[u - 1];                                                            \
                        row[2 * u + 1] += f1[u] + f3[u - 1];                                                        \
                    }                                                                                               \
                    row[2 * tw] += f2[tw - 1];                                                                      \
                    row[2 * tw + 1] += f3[tw - 1];                                                                  \
                }                                                                                                   \
            }                                                                                                       \
            T *xp = x + plane * h * w;                                                                              \
            for (int64_t r = 0; r < h; r++)                                                                         \
                memcpy(xp + r * w, buf + (r + 1) * len + 1, sizeof(T) * (size_t)w);                                 \
        })                                                                                                          \
    }                                                                                                               \
                                                                                                                    \
    /* m [16, channels, batch * tiles] -> y [batch, channels, h, w], contiguous: A^T m A per tile, cropped. The     \
       scratch holds q[a][j][tx] = (A^T m)[a][j] along the height, then two output rows of 2 tw. */                 \
    int bigan_wino_out_##SUFFIX(const T *m, T *y, int64_t batch, int64_t channels, int64_t h, int64_t w,            \
                                int nthreads)                                                                       \
    {                                                                                                               \
        FOR_EACH_PLANE(T, 12 * tw, {                                                                                \
            T *q = scratch, *out = scratch + 8 * tw;                                                                \
            const T *mp = m + c * nt + b * tiles;                                                                   \
            T *yp = y + plane * h * w;                                                                              \
            for (int64_t ty = 0; ty < th; ty++) {                                                                   \
                for (int j = 0; j < 4; j++) {                                                                       \
                    const T *b0 = mp + (0 + j) * slab + ty * tw, *b1 = mp + (4 + j) * slab + ty * tw;               \
                    const T *b2 = mp + (8 + j) * slab + ty * tw, *b3 = mp + (12 + j) * slab + ty * tw;              \
                    T *q0 = q + j * tw, *q1 = q + (4 + j) * tw;                                                     \
                    for (int64_t tx = 0; tx < tw; tx++) {                                                           \
                        q0[tx] = b0[tx] + b1[tx] + b2[tx];                                                          \
                        q1[tx] = b1[tx] - b2[tx] - b3[tx];                                                          \
                    }                                                                                               \
                }                                                                                                   \
                for (int a = 0; a < 2; a++) {                                                                       \
                    const T *p0 = q + (4 * a + 0) * tw, *p1 = q + (4 * a + 1) * tw;                                 \
                    const T *p2 = q + (4 * a + 2) * tw, *p3 = q + (4 * a + 3) * tw;                                 \
                    T *o = out + a * 2 * tw;                                                                        \
                    for (int64_t tx = 0; tx < tw; tx++) {                                                           \
                        o[2 * tx] = p0[tx] + p1[tx] + p2[tx];                                                       \
                        o[2 * tx + 1] = p1[tx] - p2[tx] - p3[tx];                                                   \
                    }                                                                                               \
                    if (2 * ty + a < h)                                                                             \
                        memcpy(yp + (2 * ty + a) * w, o, sizeof(T) * (size_t)w);                                    \
                }                                                                                                   \
            }                                                                                                       \
        })                                                                                                          \
    }                                                                                                               \
                                                                                                                    \
    /* The adjoint of wino_out: y [batch, channels, h, w] (strides sn, sc, sh, 1) -> m [16, channels, batch * tiles]: \
       A g A^T of each tile's 2x2 gradient g (zeros past the edge). The scratch holds a tile row's two gradient rows\
       (2 tw each), then their even and odd columns. */                                                             \
    int bigan_wino_out_t_##SUFFIX(const T *y, T *m, int64_t batch, int64_t channels, int64_t sn, int64_t sc,        \
                                  int64_t sh, int64_t h, int64_t w, int nthreads)                                   \
    {                                                                                                               \
        FOR_EACH_PLANE(T, 8 * tw, {                                                                                 \
            T *z = scratch, *ev0 = scratch + 4 * tw, *od0 = ev0 + tw, *ev1 = od0 + tw, *od1 = ev1 + tw;             \
            const T *yp = y + b * sn + c * sc;                                                                      \
            T *mp = m + c * nt + b * tiles;                                                                         \
            for (int64_t ty = 0; ty < th; ty++) {                                                                   \
                for (int a = 0; a < 2; a++) {                                                                       \
                    T *za = z + a * 2 * tw;                                                                         \
                    const int64_t row = 2 * ty + a;                                                                 \
                    if (row < h) {                                                                                  \
                        memcpy(za, yp + row * sh, sizeof(T) * (size_t)w);                                           \
                        if (w < 2 * tw)                                                                             \
                            za[w] = 0;                                                                              \
                    } else {                                                                                        \
                        memset(za, 0, sizeof(T) * (size_t)(2 * tw));                                                \
                    }                                                                                               \
                }                                                                                                   \
                for (int64_t tx = 0; tx < tw; tx++) {                                                               \
                    ev0[tx] = z[2 * tx];                                                                            \
                    od0[tx] = z[2 * tx + 1];                                                                        \
                    ev1[tx] = z[2 * tw + 2 * tx];                                                                   \
                    od1[tx] = z[2 * tw + 2 * tx + 1];                                                               \
                }                                                                                                   \
                /* along the width, row a -> (g0, g0 + g1, g0 - g1, -g1); then along the height, rows (r0, r1) ->   \
                   (r0, r0 + r1, r0 - r1, -r1) */                                                                   \
                OUT_T_COLUMN(T, 0, ev0[tx], ev1[tx])                                                                \
                OUT_T_COLUMN(T, 1, ev0[tx] + od0[tx], ev1[tx] + od1[tx])                                            \
                OUT_T_COLUMN(T, 2, ev0[tx] - od0[tx], ev1[tx] - od1[tx])                                            \
                OUT_T_COLUMN(T, 3, -od0[tx], -od1[tx])                                                              \
            }                                                                                                       \
        })                                                                                                          \
    }

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
