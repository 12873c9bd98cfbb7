"""Ensemble inference: segmentation, uncertainty map and uncertainty score of generated samples.

The fast path evaluates every classifier's first layer with ``projection.ProjectionPlan`` (no dense feature matrix)
and runs the remaining layers on bands of output rows; ``fast=False`` runs every full model on
``feature_maps.dense_features``, as the originals.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn

from interpreter.feature_maps import check_mode, check_out_res, dense_features
from interpreter.projection import ProjectionPlan, prepare_maps, split_columns


@dataclass
class EnsembleResult:
    """One sample's ensemble output.

    ``labels``: int64 [H, W], per-pixel majority vote over the models' argmax labels (ties -> smallest label, as
    ``scipy.stats.mode``); ``js``: float32 [H, W], ``H(mean_k p_k) - mean_k H(p_k)`` (natural log); ``score``: mean of
    the largest ``int(H*W*top_fraction)`` js values (all of them when that is 0; the originals'
    ``uncertrainty_score``); ``mean_prob``: [H, W, C] mean softmax (with ``keep_mean_prob``); ``model_probs``:
    [M, H, W, C] per-model softmax (with ``keep_model_probs``); both in the models' dtype.
    """
    labels: torch.Tensor
    score: float
    js: torch.Tensor
    mean_prob: Optional[torch.Tensor] = None
    model_probs: Optional[torch.Tensor] = None


def _layers_of(model):
    """The ``nn.Sequential`` of a pixel classifier: ``model.module`` (DataParallel), then ``.layers`` if present."""
    m = model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
    layers = getattr(m, 'layers', m)
    if not isinstance(layers, nn.Sequential) or len(layers) == 0 or not isinstance(layers[0], nn.Linear):
        raise TypeError('each model must be an nn.Sequential (or have one as .layers) whose first module is '
                        'nn.Linear')
    return layers


# ------------------------------------------------------------------------------------ the layers after the first Linear
# compiled into stages that run with plain matmuls on a band's pixel-major rows


class _ReLU:
    def __call__(self, x):
        # in place on the band (which may be overwritten) or a stage's output; a strided column slice gets a copy
        return x.relu_() if x.is_contiguous() else x.relu()


@dataclass
class _Affine:
    """``x @ wt + b``: a Linear (``wt`` [in, out], ``b`` [out]), possibly with a BatchNorm folded in."""
    wt: torch.Tensor
    b: torch.Tensor

    def __call__(self, x):
        return torch.addmm(self.b, x, self.wt)


@dataclass
class _Scale:
    """``x * a + c``: an eval-mode BatchNorm1d."""
    a: torch.Tensor
    c: torch.Tensor

    def __call__(self, x):
        return torch.addcmul(self.c, x, self.a)


@dataclass
class _ClassMajorHead:
    """The last Linear, giving class-major logits ``[C, n]`` (``w`` [C, in], ``b`` [C, 1]): the layout the
    statistics reduce over, written without a transposing copy."""
    w: torch.Tensor
    b: torch.Tensor

    @classmethod
    def from_affine(cls, affine):
        return cls(affine.wt.t().contiguous(), affine.b[:, None].contiguous())

    def __call__(self, x, out=None):
        if out is None:
            return torch.addmm(self.b, self.w, x.t())
        return torch.addmm(self.b, self.w, x.t(), out=out)


def _fold(first, then):
    """``first`` followed by ``then`` as one ``_Affine`` when one is a Scale and the other an Affine, else None."""
    if isinstance(first, _Scale) and isinstance(then, _Affine):  # (x a + c) W + b
        return _Affine(then.wt * first.a[:, None], then.b + first.c @ then.wt)
    if isinstance(first, _Affine) and isinstance(then, _Scale):  # (x W + b) a + c
        return _Affine(first.wt * then.a[None, :], first.b * then.a + then.c)
    return None


def _compile_rest(rest):
    """The layers after the first Linear as a list of ``_ReLU`` / ``_Affine`` / ``_Scale`` stages, with eval-mode
    BatchNorm folded into a neighbouring Linear.

    Returns None when a module is not Linear / ReLU / BatchNorm1d with running statistics / Dropout / Identity;
    the caller then runs the modules themselves. Folding changes results only by float rounding.
    """
    stages = []
    for mod in rest:
        if isinstance(mod, nn.Linear):
            b = mod.bias if mod.bias is not None else torch.zeros_like(mod.weight[:, 0])
            stages.append(_Affine(mod.weight.detach().t(), b.detach()))
        elif isinstance(mod, nn.ReLU):
            stages.append(_ReLU())
        elif isinstance(mod, nn.BatchNorm1d):
            if mod.training or mod.running_mean is None or mod.running_var is None:
                return None
            a = torch.rsqrt(mod.running_var.detach() + mod.eps)
            if mod.weight is not None:
                a = a * mod.weight.detach()
            c = -mod.running_mean.detach() * a
            if mod.bias is not None:
                c = c + mod.bias.detach()
            stages.append(_Scale(a, c))
        elif isinstance(mod, (nn.Dropout, nn.Identity)) and not (isinstance(mod, nn.Dropout) and mod.training):
            continue
        else:
            return None
    merged = []
    for st in stages:
        folded = _fold(merged[-1], st) if merged else None
        if folded is None:
            merged.append(st)
        else:
            merged[-1] = folded
    return merged


@dataclass
class _CompiledTail:
    """One model's compiled layers after the first Linear: ``body`` on pixel-major rows, then ``head`` (None when
    the layers do not end in a Linear: the rows are then transposed to class-major)."""
    body: list
    head: Optional[_ClassMajorHead]

    @classmethod
    def of(cls, rest):
        stages = _compile_rest(rest)
        if stages is None:
            return None
        if stages and isinstance(stages[-1], _Affine):
            return cls(stages[:-1], _ClassMajorHead.from_affine(stages[-1]))
        return cls(stages, None)


class _PassRunner:
    """Runs the layers after the first Linear for the models of one pass on a band of pre-activations.

    Each model's layers are compiled (``_CompiledTail``) and run with plain matmuls on its column slice of the band
    (no copy: the slice is a strided matrix the BLAS reads directly); a leading ReLU shared by all models is left to
    the plan (and dropped from the tails). The last Linear writes class-major logits ``[C, n]``. Models whose layers
    do not compile run their own modules.
    """

    def __init__(self, members):
        self.members = members  # (model index, column offset, hidden, rest modules)
        self.tails = [_CompiledTail.of(rest) for _, _, _, rest in members]
        self.shared_relu = all(t is not None and t.body and isinstance(t.body[0], _ReLU) for t in self.tails)
        if self.shared_relu:
            self.tails = [_CompiledTail(t.body[1:], t.head) for t in self.tails]

    def __call__(self, hb, out=None):
        """``hb`` [n, sum hidden] (may be overwritten) -> logits [m, C, n] (class-major), written into ``out`` when
        given (e.g. a band of the statistics' buffer: no stacking copy). With ``shared_relu`` the leading ReLU of
        every model must already be applied to ``hb`` (``ProjectionPlan.run(relu=True)`` does it in one pass over
        all models' columns, fused into the kernel where it runs)."""
        outs = []
        for i, ((m, off, h, rest), tail) in enumerate(zip(self.members, self.tails)):
            x = hb[:, off:off + h]
            if tail is None:
                outs.append(self._place(out, i, m, rest(x).t()))
                continue
            for stage in tail.body:
                x = stage(x)
            if tail.head is None:
                x = self._place(out, i, m, x.t())
            elif out is not None and tail.head.w.shape[0] == out.shape[1]:
                x = tail.head(x, out=out[i])
            else:
                x = self._place(out, i, m, tail.head(x))
            outs.append(x)
        if out is not None:
            return out
        if len(outs) == 1:
            return outs[0].unsqueeze(0)
        return torch.stack(outs)

    def _place(self, out, i, model, logits):
        if out is None:
            return logits
        if logits.shape != out.shape[1:]:
            raise ValueError(f'model {model} gives {logits.shape[0]} classes, model {self.members[0][0]} gives '
                             f'{out.shape[1]}')
        out[i].copy_(logits)
        return out[i]


_STATS_CHUNK = 16384  # pixels per reduction step: bounds the temporaries (about 10 x models x classes x chunk values)


class _EnsembleStats:
    """Accumulates per-model logits into vote counts, summed probabilities and summed entropies.

    The logits of a group of models (one pass of the fast path, one model of the dense path) arrive for all pixels
    at once, class-major, and are reduced in chunks of ``chunk`` pixels: many small reductions over a handful of
    classes cost more than the arithmetic, one reduction over everything more memory than it needs.
    ``logits_buffer`` lends a reused buffer for a group's logits.
    """

    def __init__(self, num_models, num_pixels, keep_mean_prob, keep_model_probs, chunk=None):
        self.num_models = num_models
        self.num_pixels = num_pixels
        self.keep_model_probs = keep_model_probs
        self.keep_mean_prob = keep_mean_prob
        self.chunk = int(chunk or _STATS_CHUNK)
        self.psum = self.hsum = self.votes = self.model_probs = self._ones = self._buffer = None

    def logits_buffer(self, m, c, dtype, device):
        """A [m, c, num_pixels] buffer for the logits of ``m`` models (reused by the next group)."""
        need = m * c * self.num_pixels
        buf = self._buffer
        if buf is None or buf.numel() < need or buf.dtype != dtype or buf.device != torch.device(device):
            self._buffer = buf = None
            self._buffer = buf = torch.empty([need], dtype=dtype, device=device)
        return buf[:need].view(m, c, self.num_pixels)

    def add(self, first_model, logits):
        """``logits`` [m, C, num_pixels] (class-major) of models ``first_model .. first_model+m-1``."""
        m, c, n = logits.shape
        if n != self.num_pixels:
            raise ValueError(f'expected logits for {self.num_pixels} pixels, got {n}')
        if self.psum is None:
            kw = dict(dtype=logits.dtype, device=logits.device)
            self.psum = torch.zeros([c, n], **kw)
            self.hsum = torch.zeros([n], **kw)
            self.votes = torch.zeros([n, c], dtype=torch.int32, device=logits.device)
            if self.keep_model_probs:
                self.model_probs = torch.zeros([self.num_models, c, n], **kw)
        elif c != self.psum.shape[0]:
            raise ValueError(f'model {first_model} gives {c} classes, an earlier model {self.psum.shape[0]}')
        models = slice(first_model, first_model + m)
        for start in range(0, n, self.chunk):
            self._reduce(models, start, logits[:, :, start:start + self.chunk])

    def _reduce(self, models, start, logits):
        m, c, n = logits.shape
        if self._ones is None or self._ones.shape[0] < n or self._ones.shape[1] < m:
            self._ones = torch.ones([n, m], dtype=torch.int32, device=logits.device)
        z = logits - logits.amax(dim=1, keepdim=True)
        e = z.exp()
        total = e.sum(dim=1, keepdim=True)
        p = e.div_(total)  # softmax
        logp = z.sub_(total.log_())  # log_softmax
        # Categorical(logits=...).entropy() = -(clamp(log_softmax, min=finfo.min) * softmax).sum(classes)
        neg_entropy = (logp.clamp(min=torch.finfo(logp.dtype).min) * p).sum(1)  # [m, n]
        sl = slice(start, start + n)
        self.psum[:, sl] += p.sum(0) if m > 1 else p[0]
        self.hsum[sl] -= neg_entropy.sum(0) if m > 1 else neg_entropy[0]
        # the originals: torch.max(log_softmax(logits), 1); first maximum on ties. (argmax over a short,
        # non-innermost axis is slow on CPU; on a pixel-major copy it is fast.)
        label = logp.permute(2, 0, 1).contiguous().argmax(dim=2)  # [n, m]
        self.votes[sl].scatter_add_(1, label, self._ones[:n, :m])
        if self.model_probs is not None:
            self.model_probs[models, :, sl] = p

    def finish(self, out_res, top_fraction):
        M = self.num_models
        self._buffer = None
        mean = self.psum.t() / M
        # Categorical(probs=mean).entropy(): probs renormalised, log of probs clamped to [eps, 1 - eps].
        probs = mean / mean.sum(1, keepdim=True)
        eps = torch.finfo(probs.dtype).eps
        logits = torch.log(probs.clamp(min=eps, max=1 - eps)).clamp(min=torch.finfo(probs.dtype).min)
        full_entropy = -(logits * probs).sum(1)
        js = full_entropy - self.hsum / M
        k = int(self.num_pixels * top_fraction)
        top = js if k <= 0 else torch.topk(js, k, sorted=False).values  # js.sort()[-0:] is everything
        score = float(top.double().mean())
        labels = self.votes.argmax(dim=1).to(torch.int64)  # first maximum: the smallest label on ties
        return EnsembleResult(
            labels=labels.view(out_res, out_res),
            score=score,
            js=js.to(torch.float32).view(out_res, out_res),
            mean_prob=mean.reshape(out_res, out_res, -1) if self.keep_mean_prob else None,
            model_probs=(self.model_probs.transpose(1, 2).reshape(M, out_res, out_res, -1)
                         if self.model_probs is not None else None))


class EnsemblePredictor:
    """Segmentation, uncertainty map and uncertainty score of one generated sample from an ensemble of classifiers.

    ``models``: pixel classifiers; each is an ``nn.Sequential`` whose first module is ``nn.Linear`` (or has one as
    ``.layers``, optionally inside DataParallel). They are put in eval mode; computation runs on the first model's
    device and in its parameter dtype.

    ``fast=True``: the first layer of each model is evaluated by ``ProjectionPlan`` (native-resolution projection,
    then upsampling of the hidden activations band by band), ``models_per_pass`` models at a time; the remaining
    layers (BatchNorm folded into the next Linear) run on each band of ``chunk`` pixels (rounded to whole rows).
    ``use_kernel``: the C upsampling kernel (``upsample_kernel``; CPU and float32 only): None uses it where it
    builds, False never (the PyTorch path), True requires it. ``models_per_pass`` None: 2 with the kernel (larger
    GEMMs, 5-7 % faster), else 1 (the PyTorch path's buffers grow with it).
    Extra memory at paper256, 256x256, 128 hidden units: with the kernel and 2 models per pass, 61 MiB of
    pixel-major map copies, 21 MiB of native-resolution projections, a 4 MiB band and one pass's stacked weights
    (5 MiB); the PyTorch path with 1 model per pass: 32 MiB of copies, 11 MiB of projections, 33 MiB of
    x-interpolated projections and a 2 MiB band. Plus one pass's logits (2 MiB for 2 models x 4 classes) and the
    vote and probability sums (2.3 MiB). Call ``release()`` to drop the kept buffers. ``fast=False``: the reference,
    ``dense_features`` and every full model on the [H*W, D] matrix, as the originals.

    ``top_fraction``: fraction of pixels whose js values make the score (the originals: 1/10).
    ``keep_mean_prob`` / ``keep_model_probs``: also return the mean / per-model softmax (models' dtype).
    """

    def __init__(self, models: Sequence[nn.Module], out_res: int, mode: str = 'bilinear', fast: bool = True,
                 chunk: int = 4096, models_per_pass: Optional[int] = None, top_fraction: float = 0.1,
                 keep_mean_prob: bool = False, keep_model_probs: bool = False, use_kernel: Optional[bool] = None):
        check_mode(mode)
        self.out_res = check_out_res(out_res)
        self.mode = mode
        self.fast = bool(fast)
        if int(chunk) < 1 or (models_per_pass is not None and int(models_per_pass) < 1):
            raise ValueError('chunk and models_per_pass must be positive')
        if not 0 <= float(top_fraction) <= 1:
            raise ValueError(f'top_fraction must lie in [0, 1], got {top_fraction}')
        self.chunk = int(chunk)
        self.models_per_pass = None if models_per_pass is None else int(models_per_pass)
        self.use_kernel = use_kernel
        self.top_fraction = float(top_fraction)
        self.keep_mean_prob = keep_mean_prob
        self.keep_model_probs = keep_model_probs
        self.models = list(models)
        if not self.models:
            raise ValueError('models is empty')
        self.layers = [_layers_of(m) for m in self.models]
        for m in self.models:
            m.eval()
        first = self.layers[0][0].weight
        self.device, self.dtype = first.device, first.dtype
        self.dim = first.shape[1]
        for i, layers in enumerate(self.layers):
            if layers[0].in_features != self.dim:
                raise ValueError(f'model {i} takes {layers[0].in_features} features, model 0 takes {self.dim}')
        self._passes = None
        self._plan = None
        self._stack_buffer = None

    def _prepare(self, layout):
        key = tuple(layout)
        if self._plan is not None and self._plan_key == key:
            return
        self._plan = None  # free the old plan's buffers before building the new one
        band_rows = max(1, self.chunk // self.out_res)
        self._plan = ProjectionPlan(layout, self.out_res, self.mode, band_rows, self.device, self.dtype,
                                     use_kernel=self.use_kernel)
        self._plan_key = key
        per_pass = self.models_per_pass or (2 if self._plan.kernel is not None else 1)
        self._passes = []
        for start in range(0, len(self.layers), per_pass):
            members, weights, biases, off = [], [], [], 0
            for m in range(start, min(start + per_pass, len(self.layers))):
                lin = self.layers[m][0]
                hidden = lin.out_features
                weights.append(lin.weight.detach())
                biases.append(lin.bias.detach() if lin.bias is not None
                              else torch.zeros(hidden, dtype=self.dtype, device=self.device))
                members.append((m, off, hidden, self.layers[m][1:]))
                off += hidden
            self._passes.append((_PassRunner(members), weights, torch.cat(biases)))

    def _stacked(self, weights):
        """The first-layer weights of a pass's models stacked into one [sum hidden, D] matrix. One buffer serves
        every pass (2.5 MB per model at paper256: a copy kept per pass would add 25 MB to a fast path of about
        110 MB, and a fresh allocation per pass costs more in page faults than the copy)."""
        if len(weights) == 1:
            return weights[0]
        rows = sum(w.shape[0] for w in weights)
        if self._stack_buffer is None or self._stack_buffer.shape[0] < rows:
            self._stack_buffer = None
            self._stack_buffer = torch.empty([rows, self.dim], dtype=self.dtype, device=self.device)
        return torch.cat(weights, dim=0, out=self._stack_buffer[:rows])

    def release(self):
        """Free the fast path's cached buffers and weight copies (rebuilt on the next call)."""
        self._plan = self._passes = self._stack_buffer = None

    def __call__(self, features) -> EnsembleResult:
        with torch.no_grad():
            maps, layout = prepare_maps(features, self.dim, self.device, self.dtype)
            R = self.out_res
            stats = _EnsembleStats(len(self.layers), R * R, self.keep_mean_prob, self.keep_model_probs)
            if self.fast:
                self._prepare(layout)
                self._plan.load(maps)
                for runner, weights, bias in self._passes:
                    weights_t = split_columns(self._stacked(weights), layout)
                    logits = []  # the pass's [m, C, R*R] buffer, made once the first band tells C

                    def consume(y0, y1, hb, runner=runner, logits=logits):
                        if logits:
                            runner(hb, out=logits[0][:, :, y0 * R:y1 * R])
                            return
                        band = runner(hb)
                        logits.append(stats.logits_buffer(band.shape[0], band.shape[1], band.dtype, band.device))
                        logits[0][:, :, y0 * R:y1 * R] = band
                    self._plan.run(weights_t, bias, consume, relu=runner.shared_relu)
                    stats.add(runner.members[0][0], logits[0])
                self._plan.unload()
            else:
                x = dense_features(maps, R, self.mode, self.dtype)
                for m, layers in enumerate(self.layers):
                    stats.add(m, layers(x).t().unsqueeze(0))
                del x
            return stats.finish(R, self.top_fraction)
