"""Drop-in ``conv2d`` / ``conv_transpose2d`` whose weight gradient can be switched off.

Modern PyTorch differentiates convolutions to any order by itself, so this module no longer exists to get
double backward. It keeps the upstream interface and one real benefit: inside ``no_weight_gradients()``
the regularisers (R1, path length) get input gradients without computing weight gradients. That only
happens when ``enabled`` is True (the training loop sets it); otherwise the calls go straight to
``torch.nn.functional``. The custom backward is built from convolutions again, so it stays differentiable.

On the CPU fast path (``custom_ops.cpu_fast_path``) the calls go straight to ``torch.nn.functional`` as well: there
the Python Function costs more than it saves, and ``torch.autograd.grad(..., inputs=...)``, which the regularisers
use, already leaves out the weight gradients nobody asked for. The exception is a large strided convolution that
needs a gradient (the discriminator's downsampling at 64 pixels): oneDNN's strided input gradient, like PyTorch's
transposed convolution, takes about 1.5 times the forward convolution's time on the CPU there, so the Function's
transposed direction runs as one dense convolution per output phase (``conv2d_resample.conv_transpose2d_polyphase``).
"""

import contextlib

import torch
import torch.nn.functional as F

from .. import custom_ops

enabled = False                    # the training loop turns this on
weight_gradients_disabled = False  # set by no_weight_gradients()


@contextlib.contextmanager
def no_weight_gradients(disable=True):
    """Skip weight gradients of the convolutions in this module while the context is active."""
    global weight_gradients_disabled
    old = weight_gradients_disabled
    if disable:
        weight_gradients_disabled = True
    try:
        yield
    finally:
        weight_gradients_disabled = old


#: On the CPU fast path, a strided convolution with a gradient whose output has at least this many pixels takes
#: the Function (its input gradient by phases); on smaller maps oneDNN's own is as fast (measured).
STRIDED_FUNCTION_MIN_PIXELS = 32 * 32


def _use_function(input, weight, stride, padding=0, transpose=False):
    """The Function (not ``torch.nn.functional``): in training off the CPU fast path, and on it for a large strided
    convolution that records a gradient."""
    if not custom_ops.cpu_fast_path(input, weight):
        return enabled
    s, p = _pair(stride), _pair(padding)
    if transpose or s == (1, 1) or not torch.is_grad_enabled() or not (input.requires_grad or weight.requires_grad):
        return False
    out = [(input.shape[i + 2] + 2 * p[i] - weight.shape[i + 2]) // s[i] + 1 for i in range(2)]
    return out[0] * out[1] >= STRIDED_FUNCTION_MIN_PIXELS


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if _use_function(input, weight, stride, padding):
        return _conv_function(False, weight.shape, stride, padding, 0, dilation, groups).apply(input, weight, bias)
    return F.conv2d(input, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    if _use_function(input, weight, stride, padding, transpose=True):
        return _conv_function(True, weight.shape, stride, padding, output_padding, dilation, groups).apply(
            input, weight, bias)
    return F.conv_transpose2d(input, weight, bias, stride=stride, padding=padding, output_padding=output_padding,
                              groups=groups, dilation=dilation)


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(i) for i in v)


_functions = {}


def _conv_function(transpose, weight_shape, stride, padding, output_padding, dilation, groups):
    """Autograd Function for one convolution geometry, cached."""
    stride, padding, output_padding, dilation = (_pair(v) for v in (stride, padding, output_padding, dilation))
    key = (transpose, tuple(weight_shape), stride, padding, output_padding, dilation, groups)
    if key in _functions:
        return _functions[key]
    kernel = tuple(weight_shape[2:])

    def forward_conv(x, w, b=None):
        if transpose and stride[0] == stride[1] > 1 and dilation == (1, 1) and custom_ops.cpu_fast_path(x, w):
            from .conv2d_resample import conv_transpose2d_polyphase  # (conv2d_resample imports this module)
            y = conv_transpose2d_polyphase(x, w, stride=stride[0], padding=padding, groups=groups,
                                           output_padding=output_padding)
            return y if b is None else y + b.reshape(1, -1, 1, 1)
        if transpose:
            return F.conv_transpose2d(x, w, b, stride=stride, padding=padding, output_padding=output_padding,
                                      groups=groups, dilation=dilation)
        return F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)

    def input_grad_output_padding(in_shape, out_shape):
        # The output padding that makes the adjoint convolution reproduce the input size exactly.
        if transpose:
            return (0, 0)
        return tuple(in_shape[i + 2] - (out_shape[i + 2] - 1) * stride[i] + 2 * padding[i]
                     - dilation[i] * (kernel[i] - 1) - 1 for i in range(2))

    class Conv2d(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b):
            ctx.save_for_backward(x if w.requires_grad else None, w if x.requires_grad else None)
            ctx.x_shape = x.shape
            return forward_conv(x, w, b)

        @staticmethod
        def backward(ctx, dy):
            x, w = ctx.saved_tensors
            dx = dw = db = None
            if ctx.needs_input_grad[0]:
                op = input_grad_output_padding(ctx.x_shape, dy.shape)
                dx = _conv_function(not transpose, weight_shape, stride, padding, op, dilation, groups).apply(
                    dy, w, None)
            if ctx.needs_input_grad[1] and not weight_gradients_disabled:
                dw = ConvWeightGrad.apply(dy, x)
            if ctx.needs_input_grad[2]:
                db = dy.sum([0, 2, 3])
            return dx, dw, db

    class ConvWeightGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, dy, x):
            ctx.save_for_backward(dy if x.requires_grad else None, x if dy.requires_grad else None)
            ctx.x_shape, ctx.dy_shape = x.shape, dy.shape
            w = x.new_zeros(()).expand(weight_shape)  # only its shape is read
            return torch.ops.aten.convolution_backward(
                dy, x, w, None, stride, padding, dilation, transpose, output_padding, groups,
                [False, True, False])[1]

        @staticmethod
        def backward(ctx, d_dw):
            dy, x = ctx.saved_tensors
            d_dy = d_x = None
            if ctx.needs_input_grad[0]:  # dw is linear in dy: its adjoint is the forward convolution of x
                d_dy = Conv2d.apply(x, d_dw, None)
            if ctx.needs_input_grad[1]:  # ... and linear in x: its adjoint is the input gradient with d_dw
                op = input_grad_output_padding(ctx.x_shape, ctx.dy_shape)
                d_x = _conv_function(not transpose, weight_shape, stride, padding, op, dilation, groups).apply(
                    dy, d_dw, None)
            return d_dy, d_x

    _functions[key] = Conv2d
    return Conv2d
