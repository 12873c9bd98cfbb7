"""The dual-branch StyleGAN2 loss: one generator with RGB and NIR outputs, one discriminator per modality.

Generator: ``softplus(-D(rgb)) + nir_weight * softplus(-D_NIR(nir))`` plus path-length regularisation on the summed
RGB and NIR gradients (as in BiOcularGAN). Discriminators: the logistic loss on each modality, with lazy R1 on both.
The original never applied R1 to D_NIR (its phase name did not match); ``nir_r1=False`` reproduces that.

Unlike the original, a discriminator phase judges the same generated pair with both discriminators, so the
generator runs once per D phase instead of once per discriminator. Phases: ``Gmain``, ``Greg``, ``Gboth``,
``Dmain``, ``Dreg``, ``Dboth``; the D phases cover D and D_NIR together.
"""

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import misc, training_stats
from torch_utils.ops import conv2d_gradfix

PHASES = ('Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg', 'Dboth')


class StyleGAN2Loss:
    def __init__(self, device, G_mapping, G_synthesis, D, D_NIR, augment_pipe=None, style_mixing_prob=0.9,
                 r1_gamma=10, r1_gamma_nir=None, nir_weight=1.0, nir_r1=True, pl_batch_shrink=2, pl_decay=0.01,
                 pl_weight=2):
        self.device = device
        self.G_mapping = G_mapping
        self.G_synthesis = G_synthesis
        self.D = D
        self.D_NIR = D_NIR
        self.augment_pipe = augment_pipe
        self.style_mixing_prob = style_mixing_prob
        self.r1_gamma = r1_gamma
        self.r1_gamma_nir = r1_gamma if r1_gamma_nir is None else r1_gamma_nir
        self.nir_weight = nir_weight
        self.nir_r1 = nir_r1
        self.pl_batch_shrink = pl_batch_shrink
        self.pl_decay = pl_decay
        self.pl_weight = pl_weight
        self.pl_mean = torch.zeros([], device=device)
        # Signs of D(real RGB) since the last ADA adjustment; kept here so a resumed run restores them exactly.
        self.ada_signs = torch.zeros([2], dtype=torch.float64, device=device)  # [sum, count]

    def run_G(self, z, c, sync):
        with misc.ddp_sync(self.G_mapping, sync):
            ws = self.G_mapping(z, c)
            if self.style_mixing_prob > 0:
                with torch.autograd.profiler.record_function('style_mixing'):
                    cutoff = torch.empty([], dtype=torch.int64, device=ws.device).random_(1, ws.shape[1])
                    cutoff = torch.where(torch.rand([], device=ws.device) < self.style_mixing_prob, cutoff,
                                         torch.full_like(cutoff, ws.shape[1]))
                    mixed = self.G_mapping(torch.randn_like(z), c, skip_w_avg_update=True)
                    layer = torch.arange(ws.shape[1], device=ws.device)[None, :, None]
                    ws = torch.where(layer < cutoff, ws, mixed)
        with misc.ddp_sync(self.G_synthesis, sync):
            img, nir = self.G_synthesis(ws)
        return img, nir, ws

    def run_D(self, D, img, c, sync):
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        with misc.ddp_sync(D, sync):
            return D(img, c)

    def accumulate_gradients(self, phase, real_img, real_nir, real_c, gen_z, gen_c, sync, gain):
        if phase not in PHASES:
            raise ValueError(f'unknown phase {phase!r}')
        do_Gmain = phase in ('Gmain', 'Gboth')
        do_Dmain = phase in ('Dmain', 'Dboth')
        do_Gpl = phase in ('Greg', 'Gboth') and self.pl_weight != 0
        do_Dr1 = phase in ('Dreg', 'Dboth') and self.r1_gamma != 0
        do_Dr1_nir = phase in ('Dreg', 'Dboth') and self.nir_r1 and self.r1_gamma_nir != 0

        if do_Gmain:
            with torch.autograd.profiler.record_function('Gmain_forward'):
                gen_img, gen_nir, _ = self.run_G(gen_z, gen_c, sync=(sync and not do_Gpl))
                logits = self.run_D(self.D, gen_img, gen_c, sync=False)
                logits_nir = self.run_D(self.D_NIR, gen_nir, gen_c, sync=False)
                training_stats.report('Loss/scores/fake', logits)
                training_stats.report('Loss/signs/fake', logits.sign())
                training_stats.report('Loss/scores/fake_nir', logits_nir)
                training_stats.report('Loss/signs/fake_nir', logits_nir.sign())
                loss_G = F.softplus(-logits) + self.nir_weight * F.softplus(-logits_nir)
                training_stats.report('Loss/G/loss', loss_G)
            with torch.autograd.profiler.record_function('Gmain_backward'):
                loss_G.mean().mul(gain).backward()

        if do_Gpl:
            with torch.autograd.profiler.record_function('Gpl_forward'):
                batch_size = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
                gen_img, gen_nir, gen_ws = self.run_G(gen_z[:batch_size], gen_c[:batch_size], sync=sync)
                noise = torch.randn_like(gen_img) / np.sqrt(gen_img.shape[2] * gen_img.shape[3])
                noise_nir = torch.randn_like(gen_nir) / np.sqrt(gen_nir.shape[2] * gen_nir.shape[3])
                with torch.autograd.profiler.record_function('pl_grads'), conv2d_gradfix.no_weight_gradients():
                    target = (gen_img * noise).sum() + (gen_nir * noise_nir).sum()
                    pl_grads = torch.autograd.grad(outputs=[target], inputs=[gen_ws], create_graph=True,
                                                   only_inputs=True)[0]
                pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()
                pl_mean = self.pl_mean.lerp(pl_lengths.mean(), self.pl_decay)
                self.pl_mean.copy_(pl_mean.detach())
                pl_penalty = (pl_lengths - pl_mean).square()
                training_stats.report('Loss/pl_penalty', pl_penalty)
                loss_Gpl = pl_penalty * self.pl_weight
                training_stats.report('Loss/G/reg', loss_Gpl)
            with torch.autograd.profiler.record_function('Gpl_backward'):
                # The zero terms put every output head in the graph, which DDP needs.
                (gen_img[:, 0, 0, 0] * 0 + gen_nir[:, 0, 0, 0] * 0 + loss_Gpl).mean().mul(gain).backward()

        loss_Dgen = loss_Dgen_nir = 0
        if do_Dmain:
            with torch.autograd.profiler.record_function('Dgen_forward'):
                gen_img, gen_nir, _ = self.run_G(gen_z, gen_c, sync=False)
                logits = self.run_D(self.D, gen_img, gen_c, sync=False)
                logits_nir = self.run_D(self.D_NIR, gen_nir, gen_c, sync=False)
                training_stats.report('Loss/scores/fake', logits)
                training_stats.report('Loss/signs/fake', logits.sign())
                training_stats.report('Loss/scores/fake_nir', logits_nir)
                training_stats.report('Loss/signs/fake_nir', logits_nir.sign())
                loss_Dgen = F.softplus(logits)
                loss_Dgen_nir = F.softplus(logits_nir)
            with torch.autograd.profiler.record_function('Dgen_backward'):
                (loss_Dgen.mean() + loss_Dgen_nir.mean()).mul(gain).backward()

        if do_Dmain or do_Dr1 or do_Dr1_nir:
            name = 'Dreal_Dr1' if do_Dmain and (do_Dr1 or do_Dr1_nir) else 'Dreal' if do_Dmain else 'Dr1'
            with torch.autograd.profiler.record_function(name + '_forward'):
                total = 0
                if do_Dmain or do_Dr1:
                    total = self._real_term(self.D, real_img, real_c, sync, do_Dmain, do_Dr1, self.r1_gamma, '',
                                            loss_Dgen)
                if do_Dmain or do_Dr1_nir:
                    total = total + self._real_term(self.D_NIR, real_nir, real_c, sync, do_Dmain, do_Dr1_nir,
                                                    self.r1_gamma_nir, '_nir', loss_Dgen_nir)
            with torch.autograd.profiler.record_function(name + '_backward'):
                total.mul(gain).backward()

    def _real_term(self, D, real, real_c, sync, do_main, do_r1, gamma, suffix, loss_gen):
        """Logistic loss on reals and/or R1 for one discriminator; returns the mean to backpropagate."""
        x = real.detach().requires_grad_(do_r1)
        logits = self.run_D(D, x, real_c, sync=sync)
        training_stats.report(f'Loss/scores/real{suffix}', logits)
        training_stats.report(f'Loss/signs/real{suffix}', logits.sign())
        if suffix == '':  # ADA follows the RGB discriminator's view of the reals, as upstream
            self.ada_signs += torch.stack([logits.detach().sign().sum().double(),
                                           torch.tensor(float(logits.numel()), dtype=torch.float64,
                                                        device=logits.device)])
        loss_real = 0
        if do_main:
            loss_real = F.softplus(-logits)
            training_stats.report(f'Loss/D/loss{suffix}', loss_gen + loss_real)
        loss_r1 = 0
        if do_r1:
            with torch.autograd.profiler.record_function('r1_grads'), conv2d_gradfix.no_weight_gradients():
                r1_grads = torch.autograd.grad(outputs=[logits.sum()], inputs=[x], create_graph=True,
                                               only_inputs=True)[0]
            r1_penalty = r1_grads.square().sum([1, 2, 3])
            loss_r1 = r1_penalty * (gamma / 2)
            training_stats.report(f'Loss/r1_penalty{suffix}', r1_penalty)
            training_stats.report(f'Loss/D/reg{suffix}', loss_r1)
        return (logits * 0 + loss_real + loss_r1).mean()
