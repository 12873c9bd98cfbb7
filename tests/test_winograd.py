"""Winograd F(2x2, 3x3) convolution of the CPU fast path (torch_utils/ops/winograd_cpu.py, csrc/winograd_cpu.c).

The four tile transforms against their definitions (each adjoint pair through <A x, y> = <x, A^T y>, the input
transform against B^T d B written out with torch), the convolution against ``F.conv2d`` in float64 to rounding for
odd and even sizes, groups, strided views and the split into parts (balanced, one weight transform), the reused
workspace (no result or gradient shares it; one per thread), gradients to second order (gradcheck and
gradgradcheck), float32 accuracy against a float64 reference (no worse than a few times the direct convolution's),
the routing in conv2d_resample (which layers take it, the reference ops never), and a 512-channel generator and
discriminator whose outputs and gradients on the fast path match the reference ops.
"""

import concurrent.futures

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from torch_utils import custom_ops
from torch_utils.ops import conv2d_resample, winograd_cpu

pytestmark = pytest.mark.skipif(winograd_cpu.KERNEL.get() is None, reason='no C compiler: the kernel is not built')

SIZES = [(1, 1), (2, 3), (5, 7), (8, 8), (6, 5)]


def _rand(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _patches(x):
    """Every tile's 4x4 input patch, [N, C, TH, TW, 4, 4], zeros outside x (an independent construction)."""
    n, c, h, w = x.shape
    th, tw = (h + 1) // 2, (w + 1) // 2
    padded = F.pad(x, (1, 2 * tw + 1 - w, 1, 2 * th + 1 - h))
    return padded.unfold(2, 4, 2).unfold(3, 4, 2)


@pytest.mark.parametrize('h,w', SIZES)
def test_input_transform_is_bt_d_b(h, w):
    x = _rand(2, 3, h, w, seed=h * 10 + w)
    bt = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=torch.float64)
    want = torch.einsum('ik,nchwkl,jl->ijcnhw', bt, _patches(x), bt).reshape(16, 3, -1)
    torch.testing.assert_close(winograd_cpu.transform_input(x), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize('h,w', SIZES)
def test_adjoint_pairs(h, w):
    n, c = 2, 3
    tiles = n * winograd_cpu._tiles(h, w)
    x, y = _rand(n, c, h, w, seed=1), _rand(n, c, h, w, seed=2)
    v, m = _rand(16, c, tiles, seed=3), _rand(16, c, tiles, seed=4)
    lhs = (winograd_cpu.transform_input(x) * v).sum()
    assert abs(lhs - (x * winograd_cpu.transform_input_adjoint(v, n, h, w)).sum()) < 1e-10 * (1 + abs(lhs))
    lhs = (winograd_cpu.transform_output(m, n, h, w) * y).sum()
    assert abs(lhs - (m * winograd_cpu.transform_output_adjoint(y)).sum()) < 1e-10 * (1 + abs(lhs))


@pytest.mark.parametrize('h,w', SIZES)
def test_convolution_matches_conv2d_in_float64(h, w):
    x, k = _rand(2, 5, h, w, seed=5), _rand(4, 5, 3, 3, seed=6)
    torch.testing.assert_close(winograd_cpu.conv2d(x, k), F.conv2d(x, k, padding=1), rtol=0, atol=1e-12)


def test_strided_views_groups_and_parts(monkeypatch):
    x = _rand(5, 6, 9, 8, seed=7)[:, :, 1:, :]  # rows of another length: read in place
    k = _rand(6, 3, 3, 3, seed=8)
    want = F.conv2d(x, k, padding=1, groups=2)
    torch.testing.assert_close(winograd_cpu.conv2d(x, k, groups=2), want, rtol=0, atol=1e-12)
    per_image = 16 * 6 * winograd_cpu._tiles(8, 8) * 8
    monkeypatch.setattr(winograd_cpu, 'CHUNK_BYTES', 2 * per_image)  # parts of two images
    torch.testing.assert_close(winograd_cpu.conv2d(x, k, groups=2), want, rtol=0, atol=1e-12)
    one = x[:1]
    monkeypatch.setattr(winograd_cpu, 'CHUNK_BYTES', per_image // 2)  # one image: parts of one group
    torch.testing.assert_close(winograd_cpu.conv2d(one, k, groups=2), F.conv2d(one, k, padding=1, groups=2),
                               rtol=0, atol=1e-12)


def test_parts_are_balanced_and_share_one_weight_transform(monkeypatch):
    per_image = 16 * 6 * winograd_cpu._tiles(8, 8) * 8
    parts, transforms = [], []
    conv, transform = winograd_cpu._conv, winograd_cpu.transform_weight
    monkeypatch.setattr(winograd_cpu, '_conv', lambda x, u, g: parts.append(x.shape[0]) or conv(x, u, g))
    monkeypatch.setattr(winograd_cpu, 'transform_weight', lambda w: transforms.append(1) or transform(w))
    k = _rand(6, 6, 3, 3, seed=30)
    for n, chunk, want in ((5, 2, [2, 2, 1]), (4, 3, [2, 2]), (4, 4, [4]), (3, 1, [1, 1, 1])):
        parts.clear(), transforms.clear()
        monkeypatch.setattr(winograd_cpu, 'CHUNK_BYTES', chunk * per_image)
        x = _rand(n, 6, 8, 8, seed=31)
        torch.testing.assert_close(winograd_cpu.conv2d(x, k), F.conv2d(x, k, padding=1), rtol=0, atol=1e-12)
        assert parts == want and len(transforms) == 1  # never above CHUNK_BYTES, as few parts as that allows


def test_results_and_gradients_do_not_share_the_reused_workspace():
    # Two convolutions of different sizes run forward before either runs backward: the second reuses (and grows)
    # the workspace the first used, so neither its output nor its gradients may depend on what is left there.
    x1, x2 = _rand(2, 6, 8, 8, seed=32).requires_grad_(), _rand(3, 6, 12, 10, seed=33).requires_grad_()
    k = _rand(5, 6, 3, 3, seed=34).requires_grad_()
    y1 = winograd_cpu.conv2d(x1, k)
    y2 = winograd_cpu.conv2d(x2, k)
    g1, g2 = _rand(*y1.shape, seed=35), _rand(*y2.shape, seed=36)
    grads = torch.autograd.grad((y1 * g1).sum() + (y2 * g2).sum(), (x1, x2, k))
    x1r, x2r, kr = (t.detach().clone().requires_grad_() for t in (x1, x2, k))
    y1r, y2r = F.conv2d(x1r, kr, padding=1), F.conv2d(x2r, kr, padding=1)
    want = torch.autograd.grad((y1r * g1).sum() + (y2r * g2).sum(), (x1r, x2r, kr))
    torch.testing.assert_close(y1, y1r, rtol=0, atol=1e-12)
    torch.testing.assert_close(y2, y2r, rtol=0, atol=1e-12)
    for got, ref in zip(grads, want):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-11)
    buffers = [b.untyped_storage().data_ptr() for b in winograd_cpu._WORKSPACE.buffers.values()]
    assert buffers and not {t.untyped_storage().data_ptr() for t in (y1, y2, *grads)} & set(buffers)


def test_threads_each_have_their_own_workspace():
    x = [_rand(2, 8, 16, 16, seed=40 + i) for i in range(4)]
    k = _rand(8, 8, 3, 3, seed=39)
    want = [F.conv2d(xi, k, padding=1) for xi in x]

    def work(i):
        return all(torch.allclose(winograd_cpu.conv2d(x[i], k), want[i], rtol=0, atol=1e-12) for _ in range(20))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(4)))


def test_threads_do_not_change_the_result():
    x = _rand(2, 64, 32, 32, dtype=torch.float32, seed=9)  # above the kernels' threading threshold
    k = _rand(64, 64, 3, 3, dtype=torch.float32, seed=10) / 24
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [winograd_cpu.transform_input(x), winograd_cpu.transform_output_adjoint(x)]
        one_t = winograd_cpu.transform_input_adjoint(one[0], 2, 32, 32)
        torch.set_num_threads(max(threads, 2))
        many = [winograd_cpu.transform_input(x), winograd_cpu.transform_output_adjoint(x)]
        many_t = winograd_cpu.transform_input_adjoint(one[0], 2, 32, 32)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, many)) and torch.equal(one_t, many_t)
    assert winograd_cpu.conv2d(x, k).shape == (2, 64, 32, 32)


@pytest.mark.parametrize('groups,parts', [(1, False), (2, False), (1, True), (2, True)])
def test_gradients_to_second_order(groups, parts, monkeypatch):
    x = _rand(3, 4, 5, 4, seed=11).requires_grad_()
    k = _rand(6, 4 // groups, 3, 3, seed=12).requires_grad_()
    if parts:
        monkeypatch.setattr(winograd_cpu, 'CHUNK_BYTES', 16 * 6 * winograd_cpu._tiles(5, 4) * 8)
    fn = lambda a, b: winograd_cpu.conv2d(a, b, groups=groups)  # noqa: E731
    assert gradcheck(fn, (x, k))
    assert gradgradcheck(fn, (x, k))


def test_float32_error_is_close_to_the_direct_convolutions():
    x = _rand(2, 256, 16, 16, seed=13)
    k = _rand(256, 256, 3, 3, seed=14) / (256 * 9) ** 0.5
    ref = F.conv2d(x, k, padding=1)
    direct = (F.conv2d(x.float(), k.float(), padding=1).double() - ref).abs().max()
    wino = (winograd_cpu.conv2d(x.float(), k.float()).double() - ref).abs().max()
    assert wino < 4 * direct and wino < 1e-5 * ref.abs().max()


def test_routing_in_conv2d_resample(monkeypatch):
    calls = []
    real = winograd_cpu.conv2d
    monkeypatch.setattr(winograd_cpu, 'conv2d', lambda x, w, groups=1: calls.append((x.shape[1], groups))
                        or real(x, w, groups=groups))
    big, small_map = _rand(1, 256, 16, 16, dtype=torch.float32), _rand(1, 256, 8, 8, dtype=torch.float32)
    k = _rand(256, 256, 3, 3, dtype=torch.float32, seed=15) / 48
    y = conv2d_resample.conv2d_resample(big, k, padding=1)
    torch.testing.assert_close(y, F.conv2d(big, k, padding=1), rtol=1e-5, atol=1e-5)
    assert calls == [(256, 1)]
    conv2d_resample.conv2d_resample(small_map, k, padding=1)  # too small a map
    conv2d_resample.conv2d_resample(big[:, :128], k[:128, :128], padding=1)  # too few channels
    conv2d_resample.conv2d_resample(big, k, padding=0)  # another padding
    with custom_ops.reference_ops():
        conv2d_resample.conv2d_resample(big, k, padding=1)
    assert calls == [(256, 1)]
    grouped = _rand(1, 512, 32, 32, dtype=torch.float32)
    conv2d_resample.conv2d_resample(grouped, k.repeat(2, 1, 1, 1), padding=1, groups=2)  # fused modulation
    assert calls == [(256, 1), (512, 2)]


def _wide_networks():
    from training import networks
    torch.manual_seed(0)
    kwargs = dict(c_dim=0, img_resolution=32, img_channels=3)
    G = networks.Generator(z_dim=32, w_dim=32, mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=16384, channel_max=256, num_fp16_res=0), **kwargs)
    D = networks.Discriminator(channel_base=16384, channel_max=256, num_fp16_res=0, **kwargs)
    return G, D


def test_wide_networks_match_the_reference_ops(monkeypatch):
    """256-channel G and D at 32x32 (where Winograd runs at 16 and 32 pixels): the fast path's images, scores and
    parameter gradients against the reference ops'."""
    calls = []
    real = winograd_cpu.conv2d
    monkeypatch.setattr(winograd_cpu, 'conv2d', lambda *a, **k: calls.append(1) or real(*a, **k))
    G, D = _wide_networks()
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    results = {}
    for ref in (True, False):
        with custom_ops.reference_ops(ref):
            G.zero_grad(set_to_none=True)
            D.zero_grad(set_to_none=True)
            img, nir = G(z, None, noise_mode='const', force_fp32=True)
            score = D(img, None, force_fp32=True)
            (score.sum() + nir.square().sum()).backward()
            with torch.no_grad():
                fused = torch.cat(G.eval()(z, None, noise_mode='const', force_fp32=True), dim=1)
            G.train()
            grads = [p.grad.clone() for p in list(G.parameters()) + list(D.parameters()) if p.grad is not None]
            results[ref] = (img.detach(), score.detach(), fused, grads)
    assert calls, 'the wide networks never reached the Winograd convolution'
    (img_r, score_r, fused_r, grads_r), (img_f, score_f, fused_f, grads_f) = results[True], results[False]
    torch.testing.assert_close(img_f, img_r, rtol=0, atol=1e-5)
    torch.testing.assert_close(fused_f, fused_r, rtol=0, atol=1e-5)
    torch.testing.assert_close(score_f, score_r, rtol=1e-4, atol=1e-5)
    for gf, gr in zip(grads_f, grads_r):
        torch.testing.assert_close(gf, gr, rtol=1e-4, atol=1e-4 * float(gr.abs().max()) + 1e-7)
