// upfirdn2d: upsample (zero insertion), pad/crop, FIR filter, downsample -- in one pass.
//
// Main kernel (tiled): every thread block owns a tile of outputs (tw columns x th rows x tc
// channels of one image). It stages the filter (already flipped or not, times gain) and the
// input tile plus halo (the input samples that tile reads) in shared memory, converted to the
// accumulation type, then every output sums only the taps that land on real (non-inserted)
// input samples. Two thread mappings: x-fastest for NCHW-like inputs and channel-fastest for
// channels_last inputs, so that global loads and stores are coalesced in both layouts.
//
// Specialisations (compile-time up / down / maximum filter size) cover the common cases for
// half and float; everything else (and double) runs the same kernel with run-time values.
// When even a one-output tile does not fit in shared memory (huge filters or factors), a
// naive one-thread-per-output kernel takes over.
//
// Index math, per axis, for the tile whose first output is o0:
//   s0   = o0 * down - pad0             u-coordinate of the first tap of the first output
//   i_lo = ceil(s0 / up)                first input sample the tile needs
//   r0   = s0 - i_lo * up               in (-up, 0]
// for the output at local index l:
//   rel  = r0 + l * down                (> -up)   u-coordinate relative to i_lo * up
//   j0   = ceil(rel / up)               local input index of its first real tap
//   k0   = j0 * up - rel                in [0, up): the first tap that hits a real sample
//   taps k = k0 + j * up (k < f) read the local input sample j0 + j.
// The input tile spans ((tile_out - 1) * down + f - 1) / up + 1 samples, which bounds j0 + j.

#include "upfirdn2d.h"

#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <type_traits>

namespace upfirdn2d_detail {

template <typename T>
struct acc_type {
    using type = float;
};
template <>
struct acc_type<double> {
    using type = double;
};

__host__ __device__ __forceinline__ int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
__host__ __device__ __forceinline__ int ceil_div(int a, int b) { return floor_div(a + b - 1, b); }

constexpr int kMaxThreads = 256;
constexpr size_t kSmemLimit = 48 * 1024;  // no opt-in needed below this
constexpr int kMaxGridY = 65535;
constexpr int kMaxBlockZ = 64;            // CUDA's limit on blockDim.z

// Per-launch tiling, chosen on the host.
struct TilePlan {
    int cl;          // 1: channel-fastest mapping (channels_last), 0: x-fastest mapping
    int tw, th, tc;  // output tile: columns, rows, channels
    int tinw, tinh;  // input tile including the halo
    int tiles_x;     // tiles along x
    int c_chunks;    // ceil(c / tc)
    int fcount;      // filter elements reserved at the start of shared memory
};

// Per-tile constants (see the index math above).
struct TileOrigin {
    int ox0, oy0;      // first output column / row of the tile
    int ix_lo, iy_lo;  // first input column / row of the input tile
    int rx0, ry0;      // r0 per axis, in (-up, 0]
};

template <int UPX, int UPY, int DX, int DY>
__host__ __device__ __forceinline__ TileOrigin tile_origin(const upfirdn2d_params& p, const TilePlan& t, int tile) {
    const int upx = UPX ? UPX : p.upx;
    const int upy = UPY ? UPY : p.upy;
    const int downx = DX ? DX : p.downx;
    const int downy = DY ? DY : p.downy;
    TileOrigin o;
    const int tile_y = tile / t.tiles_x;
    const int tile_x = tile - tile_y * t.tiles_x;
    o.ox0 = tile_x * t.tw;
    o.oy0 = tile_y * t.th;
    const int sx0 = o.ox0 * downx - p.padx0;
    const int sy0 = o.oy0 * downy - p.pady0;
    o.ix_lo = ceil_div(sx0, upx);
    o.iy_lo = ceil_div(sy0, upy);
    o.rx0 = sx0 - o.ix_lo * upx;
    o.ry0 = sy0 - o.iy_lo * upy;
    return o;
}

// Filter into shared memory: g[ky][kx] = gain * (flip ? f[ky][kx] : f[fh-1-ky][fw-1-kx]),
// rows FWM apart (fw when FWM == 0). The product is formed in float32 like the reference.
template <int FWM, typename A>
__host__ __device__ __forceinline__ void load_filter(const upfirdn2d_params& p, A* sf, int lin, int nthreads) {
    const int fw = p.fw;
    const int fh = p.fh;
    const int fstride = FWM ? FWM : fw;
    for (int i = lin; i < fw * fh; i += nthreads) {
        const int ky = i / fw;
        const int kx = i - ky * fw;
        const int src = p.flip ? i : (fh - 1 - ky) * fw + (fw - 1 - kx);
        sf[ky * fstride + kx] = static_cast<A>(p.f[src] * p.gain);
    }
}

// Input tile into shared memory, zero outside the input (and beyond the last channel).
// Thread loop order, fastest first: cl ? (channel, column, row) : (column, row, channel);
// shared memory uses the same order, so stores are conflict-free and loads coalesced.
template <typename T, typename A>
__host__ __device__ __forceinline__ void load_tile(const upfirdn2d_params& p, const TilePlan& t, const TileOrigin& o, int n,
                                          int c0, A* st, int t0, int t1, int t2, int b0, int b1, int b2) {
    const T* x = static_cast<const T*>(p.x);
    const int e0 = t.cl ? t.tc : t.tinw;
    const int e1 = t.cl ? t.tinw : t.tinh;
    const int e2 = t.cl ? t.tinh : t.tc;
    const int64_t base = int64_t(n) * p.sxN;
    for (int i2 = t2; i2 < e2; i2 += b2) {
        for (int i1 = t1; i1 < e1; i1 += b1) {
            for (int i0 = t0; i0 < e0; i0 += b0) {
                const int lc = t.cl ? i0 : i2;
                const int lx = t.cl ? i1 : i0;
                const int ly = t.cl ? i2 : i1;
                const int ix = o.ix_lo + lx;
                const int iy = o.iy_lo + ly;
                const int c = c0 + lc;
                A v = A(0);
                if (ix >= 0 && ix < p.inW && iy >= 0 && iy < p.inH && c < p.c) {
                    v = static_cast<A>(x[base + c * p.sxC + iy * p.sxH + ix * p.sxW]);
                }
                st[(i2 * e1 + i1) * e0 + i0] = v;
            }
        }
    }
}

// Outputs of the tile from shared memory. UPX..FHM: compile-time factors and maximum filter
// size (0 = take the run-time value from p); taps beyond the real filter size are skipped.
template <typename T, int UPX, int UPY, int DX, int DY, int FWM, int FHM, typename A>
__host__ __device__ __forceinline__ void compute_tile(const upfirdn2d_params& p, const TilePlan& t, const TileOrigin& o, int n,
                                             int c0, const A* sf, const A* st, int t0, int t1, int t2, int b0, int b1,
                                             int b2) {
    const int upx = UPX ? UPX : p.upx;
    const int upy = UPY ? UPY : p.upy;
    const int downx = DX ? DX : p.downx;
    const int downy = DY ? DY : p.downy;
    const int fw = p.fw;
    const int fh = p.fh;
    const int fstride = FWM ? FWM : fw;
    constexpr int NJX = (UPX && FWM) ? (FWM + UPX - 1) / UPX : 0;
    constexpr int NJY = (UPY && FHM) ? (FHM + UPY - 1) / UPY : 0;
    const int njx = NJX ? NJX : (fw + upx - 1) / upx;  // most real taps per output along x
    const int njy = NJY ? NJY : (fh + upy - 1) / upy;

    // Shared-memory strides of the input tile (see load_tile).
    const int ssx = t.cl ? t.tc : 1;
    const int ssy = t.cl ? t.tinw * t.tc : t.tinw;
    const int ssc = t.cl ? 1 : t.tinh * t.tinw;

    T* y = static_cast<T*>(p.y);
    const int64_t base = int64_t(n) * p.syN;
    const int e0 = t.cl ? t.tc : t.tw;
    const int e1 = t.cl ? t.tw : t.th;
    const int e2 = t.cl ? t.th : t.tc;
    for (int i2 = t2; i2 < e2; i2 += b2) {
        for (int i1 = t1; i1 < e1; i1 += b1) {
            for (int i0 = t0; i0 < e0; i0 += b0) {
                const int lc = t.cl ? i0 : i2;
                const int lx = t.cl ? i1 : i0;
                const int ly = t.cl ? i2 : i1;
                const int ox = o.ox0 + lx;
                const int oy = o.oy0 + ly;
                const int c = c0 + lc;
                if (ox >= p.outW || oy >= p.outH || c >= p.c) continue;

                const int relx = o.rx0 + lx * downx;  // > -upx
                const int rely = o.ry0 + ly * downy;
                const int jx0 = (relx + upx - 1) / upx;
                const int jy0 = (rely + upy - 1) / upy;
                const int kx0 = jx0 * upx - relx;
                const int ky0 = jy0 * upy - rely;

                const A* src = st + lc * ssc + jy0 * ssy + jx0 * ssx;
                A acc = A(0);
#pragma unroll
                for (int jy = 0; jy < njy; ++jy) {
                    const int ky = ky0 + jy * upy;
                    if (ky < fh) {
                        const A* srow = src + jy * ssy;
                        const A* frow = sf + ky * fstride;
#pragma unroll
                        for (int jx = 0; jx < njx; ++jx) {
                            const int kx = kx0 + jx * upx;
                            if (kx < fw) acc += frow[kx] * srow[jx * ssx];
                        }
                    }
                }
                y[base + c * p.syC + oy * p.syH + ox * p.syW] = static_cast<T>(acc);
            }
        }
    }
}

// Blocks have at most kMaxThreads threads (make_plan). No __launch_bounds__ here on purpose: with it,
// ptxas caps the registers so low that several specialisations spill.
template <typename T, int UPX, int UPY, int DX, int DY, int FWM, int FHM>
__global__ void upfirdn2d_tiled_kernel(upfirdn2d_params p, TilePlan t) {
    using A = typename acc_type<T>::type;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    A* sf = reinterpret_cast<A*>(smem_raw);
    A* st = sf + t.fcount;

    const int lin = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    load_filter<FWM>(p, sf, lin, blockDim.x * blockDim.y * blockDim.z);
    const TileOrigin o = tile_origin<UPX, UPY, DX, DY>(p, t, blockIdx.x);

    const int chunks = p.n * t.c_chunks;
    for (int chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
        const int n = chunk / t.c_chunks;
        const int c0 = (chunk - n * t.c_chunks) * t.tc;
        load_tile<T>(p, t, o, n, c0, st, threadIdx.x, threadIdx.y, threadIdx.z, blockDim.x, blockDim.y, blockDim.z);
        __syncthreads();
        compute_tile<T, UPX, UPY, DX, DY, FWM, FHM>(p, t, o, n, c0, sf, st, threadIdx.x, threadIdx.y, threadIdx.z,
                                                    blockDim.x, blockDim.y, blockDim.z);
        __syncthreads();
    }
}

// One output element, straight from global memory (fallback for huge filters / factors).
template <typename T>
__host__ __device__ __forceinline__ void naive_element(const upfirdn2d_params& p, bool cl, int64_t idx) {
    using A = typename acc_type<T>::type;
    int ox, oy, c, n;
    if (cl) {
        c = int(idx % p.c);
        idx /= p.c;
        ox = int(idx % p.outW);
        idx /= p.outW;
        oy = int(idx % p.outH);
        n = int(idx / p.outH);
    } else {
        ox = int(idx % p.outW);
        idx /= p.outW;
        oy = int(idx % p.outH);
        idx /= p.outH;
        c = int(idx % p.c);
        n = int(idx / p.c);
    }
    const T* x = static_cast<const T*>(p.x);
    const int64_t xbase = int64_t(n) * p.sxN + int64_t(c) * p.sxC;
    const int sx = ox * p.downx - p.padx0;
    const int sy = oy * p.downy - p.pady0;
    A acc = A(0);
    for (int ky = 0; ky < p.fh; ++ky) {
        const int uy = sy + ky;
        if (uy < 0 || uy % p.upy != 0) continue;
        const int iy = uy / p.upy;
        if (iy >= p.inH) break;
        for (int kx = 0; kx < p.fw; ++kx) {
            const int ux = sx + kx;
            if (ux < 0 || ux % p.upx != 0) continue;
            const int ix = ux / p.upx;
            if (ix >= p.inW) break;
            const int fi = p.flip ? ky * p.fw + kx : (p.fh - 1 - ky) * p.fw + (p.fw - 1 - kx);
            acc += static_cast<A>(p.f[fi] * p.gain) * static_cast<A>(x[xbase + iy * p.sxH + ix * p.sxW]);
        }
    }
    T* y = static_cast<T*>(p.y);
    y[int64_t(n) * p.syN + int64_t(c) * p.syC + int64_t(oy) * p.syH + int64_t(ox) * p.syW] = static_cast<T>(acc);
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads) upfirdn2d_naive_kernel(upfirdn2d_params p, int cl) {
    const int64_t total = int64_t(p.n) * p.c * p.outH * p.outW;
    const int64_t step = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
        naive_element<T>(p, cl != 0, i);
    }
}

// ------------------------------------------------------------------------------------------ host side

inline int next_pow2(int v) {
    int r = 1;
    while (r < v && r < (1 << 30)) r <<= 1;
    return r;
}

inline int64_t tile_in(int64_t tile_out, int64_t up, int64_t down, int64_t taps) {
    return ((tile_out - 1) * down + taps - 1) / up + 1;
}

struct LaunchPlan {
    TilePlan t;
    dim3 grid, block;
    size_t smem;
    bool naive;
};

// Chooses the tile and block shape; `fcount` filter elements and `esize`-byte accumulators.
inline LaunchPlan make_plan(const upfirdn2d_params& p, int fcount, size_t esize) {
    LaunchPlan L;
    TilePlan& t = L.t;
    t.cl = (p.sxC == 1 && p.c > 1) ? 1 : 0;
    t.fcount = fcount;

    int tw, th, tc;
    if (!t.cl) {  // ~1024 outputs per tile; small images put several channels in one tile
        tw = std::min(next_pow2(p.outW), 64);
        th = std::min(next_pow2(p.outH), std::max(1, 1024 / tw));
        tc = std::min(next_pow2(p.c), std::max(1, 1024 / (tw * th)));
    } else {  // 32 channels (a warp) x up to 64 pixels
        tc = std::min(next_pow2(p.c), 32);
        const int pix = std::max(1, 2048 / tc);
        tw = std::min(next_pow2(p.outW), tc >= 32 ? 8 : 16);
        th = std::min(next_pow2(p.outH), std::max(1, pix / tw));
    }
    auto smem_for = [&](int w, int h, int cc) -> int64_t {
        const int64_t in_w = tile_in(w, p.upx, p.downx, p.fw);
        const int64_t in_h = tile_in(h, p.upy, p.downy, p.fh);
        return (int64_t(fcount) + in_w * in_h * cc) * int64_t(esize);
    };
    while (smem_for(tw, th, tc) > int64_t(kSmemLimit)) {
        if (!t.cl) {
            if (tc > 1) tc /= 2;
            else if (th > 1) th /= 2;
            else if (tw > 1) tw /= 2;
            else break;
        } else {
            if (th > 1) th /= 2;
            else if (tw > 1) tw /= 2;
            else if (tc > 1) tc /= 2;
            else break;
        }
    }
    L.naive = smem_for(tw, th, tc) > int64_t(kSmemLimit);

    t.tw = tw;
    t.th = th;
    t.tc = tc;
    t.tinw = int(tile_in(tw, p.upx, p.downx, p.fw));
    t.tinh = int(tile_in(th, p.upy, p.downy, p.fh));
    t.tiles_x = (p.outW + tw - 1) / tw;
    t.c_chunks = (p.c + tc - 1) / tc;
    const int64_t tiles = int64_t(t.tiles_x) * ((p.outH + th - 1) / th);
    if (tiles > int64_t(0x7fffffff)) L.naive = true;

    int b0, b1, b2;
    if (!t.cl) {
        b0 = tw;
        b1 = std::min(th, kMaxThreads / b0);
        b2 = std::min(tc, kMaxThreads / (b0 * b1));
    } else {
        b0 = tc;
        b1 = std::min(tw, kMaxThreads / b0);
        b2 = std::min(th, kMaxThreads / (b0 * b1));
    }
    b2 = std::min(b2, kMaxBlockZ);
    L.block = dim3(b0, b1, b2);
    const int64_t chunks = int64_t(p.n) * t.c_chunks;
    L.grid = dim3(unsigned(std::min<int64_t>(tiles, 0x7fffffff)), unsigned(std::min<int64_t>(chunks, kMaxGridY)), 1);
    L.smem = size_t(smem_for(tw, th, tc));
    return L;
}

// Calls v.template run<UPX, UPY, DX, DY, FWM, FHM>() for the specialisation that fits p
// (zeros: run-time values). Double always takes the run-time variant.
template <typename T, typename V>
void dispatch(const upfirdn2d_params& p, V& v) {
    if constexpr (!std::is_same<T, double>::value) {
        const int ux = p.upx, uy = p.upy, dx = p.downx, dy = p.downy, fw = p.fw, fh = p.fh;
        if (ux == uy && dx == dy && fw <= 4 && fh <= 4) {  // 2-D filters up to 4x4
            if (ux == 1 && dx == 1) return v.template run<1, 1, 1, 1, 4, 4>();
            if (ux == 2 && dx == 1) return v.template run<2, 2, 1, 1, 4, 4>();
            if (ux == 1 && dx == 2) return v.template run<1, 1, 2, 2, 4, 4>();
        }
        if (fh == 1 && uy == 1 && dy == 1 && fw <= 12) {  // horizontal pass of a separable filter
            if (ux == 1 && dx == 1) return v.template run<1, 1, 1, 1, 12, 1>();
            if (ux == 2 && dx == 1) return v.template run<2, 1, 1, 1, 12, 1>();
            if (ux == 1 && dx == 2) return v.template run<1, 1, 2, 1, 12, 1>();
            if (ux == 4 && dx == 1) return v.template run<4, 1, 1, 1, 12, 1>();
            if (ux == 1 && dx == 4) return v.template run<1, 1, 4, 1, 12, 1>();
        }
        if (fw == 1 && ux == 1 && dx == 1 && fh <= 12) {  // vertical pass of a separable filter
            if (uy == 1 && dy == 1) return v.template run<1, 1, 1, 1, 1, 12>();
            if (uy == 2 && dy == 1) return v.template run<1, 2, 1, 1, 1, 12>();
            if (uy == 1 && dy == 2) return v.template run<1, 1, 1, 2, 1, 12>();
            if (uy == 4 && dy == 1) return v.template run<1, 4, 1, 1, 1, 12>();
            if (uy == 1 && dy == 4) return v.template run<1, 1, 1, 4, 1, 12>();
        }
        if (ux == uy && dx == dy && fw <= 8 && fh <= 8) {  // 2-D filters up to 8x8
            if (ux == 1 && dx == 1) return v.template run<1, 1, 1, 1, 8, 8>();
            if (ux == 2 && dx == 1) return v.template run<2, 2, 1, 1, 8, 8>();
            if (ux == 1 && dx == 2) return v.template run<1, 1, 2, 2, 8, 8>();
            if (ux == 4 && dx == 1) return v.template run<4, 4, 1, 1, 8, 8>();
            if (ux == 1 && dx == 4) return v.template run<1, 1, 4, 4, 8, 8>();
        }
    }
    return v.template run<0, 0, 0, 0, 0, 0>();
}

}  // namespace upfirdn2d_detail

// Kernel launches. OPS_HOST_EMULATION leaves them out: the CPU test harness in
// tests/test_cuda_build.py includes this file to run the per-thread code above on the host.
#ifndef OPS_HOST_EMULATION

namespace upfirdn2d_detail {

template <typename T>
struct Launcher {
    const upfirdn2d_params& p;
    cudaStream_t stream;
    cudaError_t err;

    template <int UPX, int UPY, int DX, int DY, int FWM, int FHM>
    void run() {
        using A = typename acc_type<T>::type;
        const int fcount = FWM ? FWM * FHM : p.fw * p.fh;
        const LaunchPlan L = make_plan(p, fcount, sizeof(A));
        if (L.naive) {
            const int64_t total = int64_t(p.n) * p.c * p.outH * p.outW;
            const int64_t blocks = std::min<int64_t>((total + kMaxThreads - 1) / kMaxThreads, int64_t(1) << 30);
            upfirdn2d_naive_kernel<T><<<unsigned(blocks), kMaxThreads, 0, stream>>>(p, L.t.cl);
        } else {
            upfirdn2d_tiled_kernel<T, UPX, UPY, DX, DY, FWM, FHM><<<L.grid, L.block, L.smem, stream>>>(p, L.t);
        }
        err = cudaGetLastError();
    }
};

}  // namespace upfirdn2d_detail

template <typename T>
cudaError_t upfirdn2d_launch(const upfirdn2d_params& p, cudaStream_t stream) {
    using namespace upfirdn2d_detail;
    if (p.n <= 0 || p.c <= 0 || p.outH <= 0 || p.outW <= 0) return cudaSuccess;
    if (p.upx < 1 || p.upy < 1 || p.downx < 1 || p.downy < 1 || p.fw < 1 || p.fh < 1) return cudaErrorInvalidValue;
    Launcher<T> launcher{p, stream, cudaSuccess};
    dispatch<T>(p, launcher);
    return launcher.err;
}

template cudaError_t upfirdn2d_launch<c10::Half>(const upfirdn2d_params& p, cudaStream_t stream);
template cudaError_t upfirdn2d_launch<float>(const upfirdn2d_params& p, cudaStream_t stream);
template cudaError_t upfirdn2d_launch<double>(const upfirdn2d_params& p, cudaStream_t stream);

#endif  // OPS_HOST_EMULATION
