"""Fused multiply-add ``a * b + c`` whose gradients are reduced back to each input's own shape."""

import torch

from .. import custom_ops


def fma(a, b, c):
    """Return ``a * b + c`` (one ``addcmul``); inputs broadcast against each other. On the CPU fast path PyTorch's
    own ``addcmul`` backward does the same reduction without a Python Function."""
    if custom_ops.cpu_fast_path(a, b, c):
        return torch.addcmul(c, a, b)
    return _FusedMultiplyAdd.apply(a, b, c)


class _FusedMultiplyAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, c):
        out = torch.addcmul(c, a, b)
        ctx.save_for_backward(a, b)
        ctx.c_shape = c.shape
        return out

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved_tensors
        da = db = dc = None
        if ctx.needs_input_grad[0]:
            da = _unbroadcast(dout * b, a.shape)
        if ctx.needs_input_grad[1]:
            db = _unbroadcast(dout * a, b.shape)
        if ctx.needs_input_grad[2]:
            dc = _unbroadcast(dout, ctx.c_shape)
        return da, db, dc


def _unbroadcast(x, shape):
    """Sum ``x`` over the axes along which a tensor of ``shape`` was broadcast."""
    extra = x.ndim - len(shape)
    if extra < 0:
        raise ValueError(f'cannot reduce a {x.ndim}-D gradient to shape {tuple(shape)}')
    dims = list(range(extra)) + [i + extra for i, n in enumerate(shape) if n == 1 and x.shape[i + extra] != 1]
    if dims:
        x = x.sum(dim=dims, keepdim=True)
    return x.reshape(shape)
