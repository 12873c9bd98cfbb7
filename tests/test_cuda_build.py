"""The CUDA plugin sources compile, and their kernel arithmetic is right -- checked without a GPU.

Where ``nvcc`` is found (on PATH, or under ``CUDA_HOME`` / ``CUDA_PATH``):

* each ``.cu`` file compiles to an object file with nvcc, for one architecture, with the flags that
  ``torch.utils.cpp_extension`` adds (half-conversion macros, ``--use_fast_math`` as the ops pass it);
* each ``.cpp`` binding compiles with the host C++ compiler against the torch headers;
* a small host program that includes both ``.cu`` files runs the kernels' own per-thread code on the CPU
  (the device helpers are ``__host__ __device__``): the upfirdn2d tiles are emulated block by block and
  thread by thread, and the results are compared with the Python reference path of the ops.

All compiles start together (one per job) when the first test needs them; each test then waits for its own.
Skipped cleanly where nvcc (or a host compiler) is missing.
"""

import ctypes
import functools
import os
import random
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from conftest import REPO

OPS = REPO / 'torch_utils' / 'ops'
PLUGINS = ['bias_act', 'upfirdn2d']
TIMEOUT = 900  # seconds per compile; generous for slow CI machines


def _find_nvcc():
    found = shutil.which('nvcc')
    if found:
        return found
    for var in ('CUDA_HOME', 'CUDA_PATH'):
        root = os.environ.get(var)
        if root and (Path(root) / 'bin' / 'nvcc').is_file():
            return str(Path(root) / 'bin' / 'nvcc')
    if Path('/usr/local/cuda/bin/nvcc').is_file():
        return '/usr/local/cuda/bin/nvcc'
    return None


NVCC = _find_nvcc()
CXX = shutil.which(os.environ.get('CXX', 'c++')) or shutil.which('g++')
pytestmark = pytest.mark.skipif(NVCC is None, reason='nvcc not found (not on PATH, CUDA_HOME or CUDA_PATH)')


@functools.lru_cache(maxsize=None)
def _cuda_includes():
    """The CUDA toolkit's include folders (cuda_runtime.h), for the host compiler and nvcc alike."""
    candidates = [os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH'),
                  str(Path(os.path.realpath(NVCC)).parent.parent), '/usr/local/cuda']
    found = [str(Path(c) / 'include') for c in candidates if c and (Path(c) / 'include' / 'cuda_runtime.h').is_file()]
    if not found:  # ask nvcc itself (it may be a wrapper script outside the toolkit)
        try:
            dry = subprocess.run([NVCC, '--dryrun', '-x', 'cu', '-c', os.devnull, '-o', os.devnull],
                                 capture_output=True, text=True, timeout=60).stderr
        except (OSError, subprocess.SubprocessError):
            dry = ''
        for line in dry.splitlines():
            if 'INCLUDES=' in line:
                found += [part[2:] for part in line.split('"') if part.startswith('-I')]
    return tuple(found[:1] or found)


@functools.lru_cache(maxsize=None)
def _arch_flags():
    """One architecture: sm_90 where this nvcc knows it, else the newest it lists."""
    try:
        listed = subprocess.run([NVCC, '--list-gpu-arch'], capture_output=True, text=True, timeout=60).stdout.split()
    except (OSError, subprocess.SubprocessError):
        listed = []
    archs = sorted(int(a.split('_')[1]) for a in listed if a.startswith('compute_') and a.split('_')[1].isdigit())
    arch = 90 if (not archs or 90 in archs) else archs[-1]
    return ('-gencode', f'arch=compute_{arch},code=sm_{arch}')


def _common_flags(module_name):
    from torch.utils import cpp_extension

    includes = list(cpp_extension.include_paths()) + [sysconfig.get_paths()['include']] + list(_cuda_includes())
    flags = [f'-I{p}' for p in includes]
    flags += ['-std=c++17', f'-DTORCH_EXTENSION_NAME={module_name}', '-DTORCH_API_INCLUDE_EXTENSION_H',
              f'-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}']
    # CPU-only torch wheels ship the c10/cuda headers without the generated CMake macros header.
    if not any((Path(p) / 'c10' / 'cuda' / 'impl' / 'cuda_cmake_macros.h').is_file() for p in includes):
        flags.append('-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE')
    return flags


def _nvcc_flags():
    from torch.utils import cpp_extension

    common = list(getattr(cpp_extension, 'COMMON_NVCC_FLAGS', None) or [
        '-D__CUDA_NO_HALF_OPERATORS__', '-D__CUDA_NO_HALF_CONVERSIONS__', '-D__CUDA_NO_BFLOAT16_CONVERSIONS__',
        '-D__CUDA_NO_HALF2_OPERATORS__', '--expt-relaxed-constexpr'])
    return common + list(_arch_flags()) + ['--use_fast_math', '-Xcompiler', '-fPIC']


# ------------------------------------------------------------------------------- host emulation harness

HARNESS = r"""
#define OPS_HOST_EMULATION  // the .cu files without their kernel launches (no device code to build)
#include "bias_act.cu"
#include "upfirdn2d.cu"

#include <cmath>
#include <limits>
#include <vector>

// ---- bias_act: the kernel's per-element code over every storage offset.
namespace {
template <typename T, int ACT, int GRAD> void ba_loop(const bias_act_params& p) {
    using A = typename bias_act_detail::acc_type<T>::type;
    const bias_act_detail::Uniforms<A> u = bias_act_detail::make_uniforms<T, A>(p);
    for (int64_t i = 0; i < p.numel; ++i) bias_act_detail::bias_act_element<T, ACT, GRAD>(p, u, i);
}
template <typename T, int ACT> void ba_grad(const bias_act_params& p) {
    if (p.grad == 0) ba_loop<T, ACT, 0>(p); else if (p.grad == 1) ba_loop<T, ACT, 1>(p); else ba_loop<T, ACT, 2>(p);
}
template <typename T> int ba_run(const bias_act_params& p) {
    switch (p.act) {
        case 1: ba_grad<T, 1>(p); return 0; case 2: ba_grad<T, 2>(p); return 0; case 3: ba_grad<T, 3>(p); return 0;
        case 4: ba_grad<T, 4>(p); return 0; case 5: ba_grad<T, 5>(p); return 0; case 6: ba_grad<T, 6>(p); return 0;
        case 7: ba_grad<T, 7>(p); return 0; case 8: ba_grad<T, 8>(p); return 0; case 9: ba_grad<T, 9>(p); return 0;
    }
    return -1;
}

// ---- upfirdn2d: the launch plan and every block / thread of the chosen kernel, in order.
using namespace upfirdn2d_detail;
template <typename T> struct Emulator {
    const upfirdn2d_params& p;
    int status;
    template <int UPX, int UPY, int DX, int DY, int FWM, int FHM> void run() {
        using A = typename acc_type<T>::type;
        const int fcount = FWM ? FWM * FHM : p.fw * p.fh;
        const LaunchPlan L = make_plan(p, fcount, sizeof(A));
        if (L.naive) {
            const int64_t total = int64_t(p.n) * p.c * p.outH * p.outW;
            for (int64_t i = 0; i < total; ++i) naive_element<T>(p, L.t.cl != 0, i);
            status = 2;
            return;
        }
        if (L.block.x * L.block.y * L.block.z > unsigned(kMaxThreads) || L.block.x > 1024 || L.block.y > 1024 ||
            L.block.z > 64 || L.grid.y > 65535 || L.smem > kSmemLimit) { status = -2; return; }
        // Shared memory between NaN guard bands: any read of an element no thread stored shows as NaN.
        const size_t guard = 1024, nsm = L.smem / sizeof(A);
        std::vector<A> mem(nsm + 2 * guard);
        const int nthr = int(L.block.x * L.block.y * L.block.z);
        const int chunks = p.n * L.t.c_chunks;
        for (unsigned bx = 0; bx < L.grid.x; ++bx) {
            for (unsigned by = 0; by < L.grid.y; ++by) {
                std::fill(mem.begin(), mem.end(), std::numeric_limits<A>::quiet_NaN());
                A* sf = mem.data() + guard;
                A* st = sf + L.t.fcount;
                for (int lin = 0; lin < nthr; ++lin) load_filter<FWM>(p, sf, lin, nthr);
                const TileOrigin o = tile_origin<UPX, UPY, DX, DY>(p, L.t, int(bx));
                for (int chunk = int(by); chunk < chunks; chunk += int(L.grid.y)) {
                    const int n = chunk / L.t.c_chunks;
                    const int c0 = (chunk - n * L.t.c_chunks) * L.t.tc;
                    for (unsigned z = 0; z < L.block.z; ++z)
                        for (unsigned y = 0; y < L.block.y; ++y)
                            for (unsigned x = 0; x < L.block.x; ++x)
                                load_tile<T>(p, L.t, o, n, c0, st, x, y, z, L.block.x, L.block.y, L.block.z);
                    for (size_t i = 0; i < size_t(L.t.tinw) * L.t.tinh * L.t.tc; ++i)
                        if (std::isnan(double(st[i]))) { status = -3; return; }
                    for (unsigned z = 0; z < L.block.z; ++z)
                        for (unsigned y = 0; y < L.block.y; ++y)
                            for (unsigned x = 0; x < L.block.x; ++x)
                                compute_tile<T, UPX, UPY, DX, DY, FWM, FHM>(p, L.t, o, n, c0, sf, st, x, y, z,
                                                                            L.block.x, L.block.y, L.block.z);
                }
            }
        }
        status = 1;
    }
};
template <typename T> int up_run(const upfirdn2d_params& p) {
    Emulator<T> e{p, 0};
    dispatch<T>(p, e);
    return e.status;
}
}  // namespace

extern "C" int emu_bias_act(int dtype, const void* x, const void* b, const void* xref, const void* yref,
                            const void* dy, void* y, long long numel, long long size_dim, long long stride_dim,
                            int grad, int act, double alpha, double gain, double clamp) {
    bias_act_params p;
    p.x = x; p.b = b; p.xref = xref; p.yref = yref; p.dy = dy; p.y = y;
    p.numel = numel; p.size_dim = size_dim; p.stride_dim = stride_dim;
    p.grad = grad; p.act = act; p.alpha = alpha; p.gain = gain; p.clamp = clamp;
    return dtype == 0 ? ba_run<c10::Half>(p) : dtype == 1 ? ba_run<float>(p) : ba_run<double>(p);
}

extern "C" int emu_upfirdn2d(int dtype, const void* x, const float* f, void* y, const int* ints,
                             const long long* strides, int flip, float gain) {
    upfirdn2d_params p;
    p.x = x; p.f = f; p.y = y;
    p.n = ints[0]; p.c = ints[1]; p.inH = ints[2]; p.inW = ints[3]; p.outH = ints[4]; p.outW = ints[5];
    p.upx = ints[6]; p.upy = ints[7]; p.downx = ints[8]; p.downy = ints[9];
    p.padx0 = ints[10]; p.padx1 = ints[11]; p.pady0 = ints[12]; p.pady1 = ints[13]; p.fw = ints[14]; p.fh = ints[15];
    p.sxN = strides[0]; p.sxC = strides[1]; p.sxH = strides[2]; p.sxW = strides[3];
    p.syN = strides[4]; p.syC = strides[5]; p.syH = strides[6]; p.syW = strides[7];
    p.flip = flip != 0; p.gain = gain;
    return dtype == 0 ? up_run<c10::Half>(p) : dtype == 1 ? up_run<float>(p) : up_run<double>(p);
}
"""


class _Job:
    def __init__(self, cmd, out, log):
        self.cmd, self.out, self.log = cmd, out, log
        self._log_file = open(log, 'w')
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT)

    def wait(self):
        try:
            rc = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = 'timeout'
        self._log_file.close()
        return rc, Path(self.log).read_text(errors='replace')

    def check(self):
        rc, text = self.wait()
        assert rc == 0 and Path(self.out).is_file(), (
            f'compile failed (exit {rc}):\n  {" ".join(self.cmd)}\n{text[-20000:]}')


@pytest.fixture(scope='module')
def jobs(tmp_path_factory):
    """Starts every compile at once (they run in parallel); tests wait for their own."""
    tmp = tmp_path_factory.mktemp('cuda_build')
    started = {}
    for name in PLUGINS:
        out = tmp / f'{name}.cu.o'
        cmd = [NVCC, '-c', str(OPS / f'{name}.cu'), '-o', str(out)] + _common_flags(f'{name}_plugin') + _nvcc_flags()
        started[f'cu:{name}'] = _Job(cmd, out, tmp / f'{name}.cu.log')
        if CXX:
            out = tmp / f'{name}.cpp.o'
            cmd = [CXX, '-c', str(OPS / f'{name}.cpp'), '-o', str(out), '-fPIC', '-O0', '-w'] + \
                _common_flags(f'{name}_plugin')
            started[f'cpp:{name}'] = _Job(cmd, out, tmp / f'{name}.cpp.log')
    src = tmp / 'ops_host_harness.cu'
    src.write_text(HARNESS)
    out = tmp / 'ops_host_harness.so'
    cmd = [NVCC, str(src), '-o', str(out), '-shared', '-O1', f'-I{OPS}'] + _common_flags('ops_host_harness') + \
        _nvcc_flags()
    started['harness'] = _Job(cmd, out, tmp / 'ops_host_harness.log')
    yield started
    for job in started.values():
        if job.proc.poll() is None:
            job.proc.kill()
        job.wait()


@pytest.mark.parametrize('name', PLUGINS)
def test_cuda_source_compiles(jobs, name):
    jobs[f'cu:{name}'].check()


@pytest.mark.parametrize('name', PLUGINS)
def test_binding_source_compiles(jobs, name):
    if CXX is None:
        pytest.skip('no host C++ compiler (c++ / g++) found')
    jobs[f'cpp:{name}'].check()


@pytest.fixture(scope='module')
def harness(jobs):
    jobs['harness'].check()
    lib = ctypes.CDLL(str(jobs['harness'].out))
    lib.emu_bias_act.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 6 + [ctypes.c_longlong] * 3 + \
        [ctypes.c_int] * 2 + [ctypes.c_double] * 3
    lib.emu_upfirdn2d.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                  ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_longlong),
                                  ctypes.c_int, ctypes.c_float]
    return lib


DTYPE_CODE = {torch.float16: 0, torch.float32: 1, torch.float64: 2}


def _permuted(shape, order, dtype, gen, scale=1.0):
    """A dense tensor of ``shape`` whose storage runs over the dimensions in ``order`` (slowest first)."""
    storage = (torch.randn([shape[d] for d in order], generator=gen, dtype=torch.float64) * scale).to(dtype)
    return storage.permute([order.index(d) for d in range(len(shape))])


# ---------------------------------------------------------------------------------------------- bias_act

def _emu_bias_act(lib, x, b, xref, yref, dy, grad, dim, act, alpha, gain, clamp):
    y = torch.empty_like(x)
    assert y.stride() == x.stride()
    size = x.shape[dim]

    def ptr(t):
        return None if t is None else t.data_ptr()

    status = lib.emu_bias_act(DTYPE_CODE[x.dtype], ptr(x), ptr(b), ptr(xref), ptr(yref), ptr(dy), ptr(y), x.numel(),
                              size, x.stride(dim) if size > 1 else 1, grad, act, alpha, gain, clamp)
    assert status == 0
    return y


def test_bias_act_kernel_math_on_host(harness):
    from torch_utils.ops import bias_act

    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    tolerance = {torch.float16: 3e-2, torch.float32: 2e-5, torch.float64: 1e-10}
    cases = [(name, dtype) for name in bias_act.activation_funcs for dtype in DTYPE_CODE]
    for trial in range(4):
        for name, dtype in cases:
            spec = bias_act.activation_funcs[name]
            ndim = rng.choice([1, 2, 3, 4])
            shape = [rng.randint(1, 5) for _ in range(ndim)]
            order = list(range(ndim))
            rng.shuffle(order)
            dim = rng.randrange(ndim)
            alpha = rng.choice([None, 0.05])
            gain = rng.choice([None, 1.0, 0.7, -1.3])
            clamp = rng.choice([None, 0.9, 256.0])
            label = f'{name} {dtype} shape {shape} order {order} dim {dim} alpha {alpha} gain {gain} clamp {clamp}'
            x = _permuted(shape, order, dtype, gen, scale=2.0)
            b = torch.randn(shape[dim], generator=gen, dtype=torch.float64).to(dtype) if trial % 2 == 0 else None
            # Incoming gradients with x's strides, as the autograd Functions hand them to the kernel.
            g, gg = (torch.empty_like(x).copy_(torch.randn(shape, generator=gen, dtype=torch.float64)) for _ in '12')
            a = float(alpha if alpha is not None else spec.def_alpha)
            k = float(gain if gain is not None else spec.def_gain)
            c = float(clamp if clamp is not None else -1)

            # The kernel: forward, first-order gradient, second-order term (as the autograd Functions call it).
            y = _emu_bias_act(harness, x, b, None, None, None, 0, dim, spec.cuda_idx, a, k, c)
            dx = _emu_bias_act(harness, g, b, x, y, None, 1, dim, spec.cuda_idx, a, k, c)
            d2 = _emu_bias_act(harness, gg, b, x, y, g, 2, dim, spec.cuda_idx, a, k, c)

            # The reference path in float64, differentiated by autograd.
            xd = x.double().requires_grad_(True)
            yd = bias_act.bias_act(xd, None if b is None else b.double(), dim=dim, act=name, alpha=alpha, gain=gain,
                                   clamp=clamp, impl='ref')
            dxd, = torch.autograd.grad(yd, xd, g.double(), create_graph=True)
            d2d = torch.autograd.grad(dxd, xd, gg.double())[0] if dxd.requires_grad else torch.zeros_like(xd)
            for what, got, want in (('forward', y, yd), ('gradient', dx, dxd), ('second order', d2, d2d)):
                want = want.detach()
                err = float(((got.double() - want).abs() / (want.abs() + 1)).max())
                assert err <= tolerance[dtype], f'{what}: {label}: relative error {err:.3g}'


# --------------------------------------------------------------------------------------------- upfirdn2d

def _emu_upfirdn2d(lib, x, f, up, down, pad, flip, gain):
    n, c, h, w = x.shape
    fh, fw = f.shape
    out_h = (h * up[1] + pad[2] + pad[3] - fh + down[1]) // down[1]
    out_w = (w * up[0] + pad[0] + pad[1] - fw + down[0]) // down[0]
    fmt = torch.channels_last if (x.stride(1) == 1 and c > 1) else torch.contiguous_format
    y = torch.full([n, c, out_h, out_w], float('nan'), dtype=x.dtype).contiguous(memory_format=fmt)
    f = f.contiguous()
    ints = (ctypes.c_int * 16)(n, c, h, w, out_h, out_w, up[0], up[1], down[0], down[1], *pad, fw, fh)
    strides = (ctypes.c_longlong * 8)(*x.stride(), *y.stride())
    status = lib.emu_upfirdn2d(DTYPE_CODE[x.dtype], x.data_ptr(), f.data_ptr(), y.data_ptr(), ints, strides,
                               int(flip), gain)
    return status, y


def _upfirdn2d_cases():
    # StyleGAN2 shapes: upsample2d, downsample2d, the filter after conv_transpose, D's filter-only pass,
    # the separable sym6 passes of the augmentation pipeline, a huge filter (naive kernel), big factors.
    fixed = [
        ((2, 5, 8, 8), (4, 4), (2, 2), (1, 1), (2, 1, 2, 1)),
        ((2, 5, 16, 16), (4, 4), (1, 1), (2, 2), (1, 1, 1, 1)),
        ((2, 5, 17, 17), (4, 4), (1, 1), (1, 1), (1, 1, 1, 1)),
        ((1, 40, 35, 66), (4, 4), (2, 2), (1, 1), (2, 1, 2, 1)),
        ((1, 40, 66, 35), (4, 4), (1, 1), (2, 2), (1, 1, 1, 1)),
        ((1, 3, 16, 16), (1, 12), (2, 1), (1, 1), (6, 5, 0, 0)),
        ((1, 3, 16, 16), (12, 1), (1, 2), (1, 1), (0, 0, 6, 5)),
        ((1, 3, 16, 16), (1, 12), (1, 1), (2, 1), (5, 5, 0, 0)),
        ((1, 3, 16, 16), (12, 1), (1, 1), (1, 2), (0, 0, 5, 5)),
        ((1, 2, 5, 5), (100, 100), (1, 1), (1, 1), (60, 60, 60, 60)),
        ((1, 2, 4, 4), (3, 3), (8, 8), (1, 1), (1, 1, 1, 1)),
        ((1, 2, 40, 40), (3, 3), (1, 1), (9, 9), (1, 1, 1, 1)),
        ((1, 3, 4, 4), (1, 1), (1, 1), (1, 1), (-1, -2, 3, -1)),
        ((2, 100, 2, 2), (4, 4), (1, 1), (2, 2), (1, 1, 1, 1)),  # 1x1 outputs, many channels per tile
        ((1, 2, 40, 1), (3, 1), (1, 1), (1, 1), (0, 0, 1, 1)),    # one column, tall tiles
    ]
    rng = random.Random(1)
    cases = [(*case, rng.choice([0, 1, 2]), rng.random() < 0.5) for case in fixed for _ in range(2)]
    while len(cases) < 100:
        kind = rng.randrange(3)  # 2-D filter, horizontal pass, vertical pass
        ux, dx = rng.choice([1, 1, 2, 2, 4, 3]), rng.choice([1, 1, 2, 2, 4, 3])
        uy, dy = (ux, dx) if rng.random() < 0.75 else (rng.choice([1, 2, 4]), rng.choice([1, 2, 4]))
        fh, fw = rng.randint(1, 8), rng.randint(1, 8)
        if kind == 1:
            fh, uy, dy, fw = 1, 1, 1, rng.randint(1, 12)
        if kind == 2:
            fw, ux, dx, fh = 1, 1, 1, rng.randint(1, 12)
        shape = (rng.randint(1, 2), rng.choice([1, 2, 3, 5, 16, 33]), rng.randint(1, 20), rng.randint(1, 20))
        pad = tuple(rng.randint(-3, 5) for _ in range(4))
        out_h = shape[2] * uy + pad[2] + pad[3] - fh + dy
        out_w = shape[3] * ux + pad[0] + pad[1] - fw + dx
        if out_h >= dy and out_w >= dx:
            cases.append((shape, (fh, fw), (ux, uy), (dx, dy), pad, rng.choice([0, 1, 2]), rng.random() < 0.5))
    return cases


def test_upfirdn2d_kernel_math_on_host(harness):
    from torch_utils.ops import upfirdn2d

    gen = torch.Generator().manual_seed(0)
    tolerance = {torch.float16: 2e-3, torch.float32: 1e-5, torch.float64: 1e-12}
    used = set()
    for i, (shape, fshape, up, down, pad, layout, flip) in enumerate(_upfirdn2d_cases()):
        dtype = list(DTYPE_CODE)[i % 3]
        gain = [1.0, 4.0, 0.5][i % 3]
        order = [[0, 1, 2, 3], [0, 2, 3, 1], [0, 3, 1, 2]][layout]  # NCHW, channels_last, an odd permutation
        x = _permuted(shape, order, dtype, gen)
        f = torch.randn(fshape, generator=gen, dtype=torch.float32)
        label = f'{dtype} x {shape} layout {order} f {fshape} up {up} down {down} pad {pad} flip {flip} gain {gain}'
        status, y = _emu_upfirdn2d(harness, x, f, up, down, pad, flip, gain)
        assert status > 0, f'{label}: emulation status {status} (-2 bad launch shape, -3 unloaded shared memory)'
        used.add(status)
        want = upfirdn2d._upfirdn2d_ref(x.double(), f, up=list(up), down=list(down), padding=list(pad),
                                        flip_filter=flip, gain=gain)
        assert y.shape == want.shape, label
        assert not torch.isnan(y).any(), f'{label}: some outputs were never written'
        err = float((y.double() - want).abs().max())
        scale = max(1.0, float(want.abs().max()))
        assert err <= tolerance[dtype] * scale, f'{label}: max error {err:.3g} (scale {scale:.3g})'
    assert used == {1, 2}, 'both the tiled and the naive kernel should have been exercised'

