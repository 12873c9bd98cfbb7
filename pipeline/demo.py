"""The whole pipeline on the built-in demo eyes, on a CPU, as a sequence of the real commands.

Each step runs the project's own command line in a subprocess (so the demo shows exactly what a user types), with
its output in ``<outdir>/logs/<step>.log``; what the demo shows of a step (GAN ticks, final losses, counts, scores) it
reads from the files the step writes, never from that output. The annotation step trains ``pipeline.auto_annotate``'s
U-Net on the demo set's true masks and lets it stand in for a person.
Finished steps are recorded in ``<outdir>/demo_state.json`` and skipped when the demo is run again (an interrupted
GAN training continues from its last snapshot). At the end: ``overview.png`` (annotated and generated pairs: RGB,
NIR, mask) and ``summary.json`` / ``summary.md`` (time per step, the commands, where the files are).
"""

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
import PIL.Image
import PIL.ImageDraw

import dnnlib
from interpreter.generate import finished_samples, generated_samples, read_sample_list
from pipeline import auto_annotate
from training.training_loop import latest_snapshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(REPO, 'EXPERIMENTS', 'interpreter', 'demo')
ANNOTATED_IDS = list(range(8))
CLASS_NAMES = auto_annotate.CLASS_NAMES  # ocular_4class, the annotations' numbering
CLASS_MAP = auto_annotate.CLASS_MAP  # the renderer's numbering into it
POLL_S = 1.0  # how often a running step's progress files are read


class DemoError(RuntimeError):
    """A step failed; the message is one line naming the step, its error and its log."""


@dataclass
class Settings:
    outdir: str
    count: int = 400  # demo pairs in the training set
    resolution: int = 32
    kimg: int = 10  # GAN training length
    num_annotate: int = 16  # images sampled for annotation (8 of them are annotated)
    num_sample: int = 120  # generated annotated pairs
    num_test: int = 100  # real demo eyes (an unused seed) the segmenters are tested on
    seg_epochs: int = 30  # segmenter training on the generated set; the 8-pair one gets as many steps
    annotator_epochs: int = 15  # the stand-in annotator's training (of 400 pairs each)
    seed: int = 0
    device: Optional[str] = None


@dataclass
class Step:
    name: str
    title: str
    run: Callable[[], Optional[List[str]]]  # returns the command it ran (or None for in-process work)


def _python(*args) -> List[str]:
    return [sys.executable, *[str(a) for a in args]]


def _shown(path) -> str:
    """A path relative to the working directory when it lies below it, else as is."""
    return os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path


def _display(args) -> str:
    """A command line as a user would type it: ``python`` for this interpreter, paths below the working directory
    relative to it."""
    cwd = os.getcwd() + os.sep
    shown = ['python' if a == sys.executable else os.path.relpath(a) if a.startswith(cwd) else a for a in args]
    return ' '.join(shown)


class Demo:
    def __init__(self, settings: Settings, log=print):
        self.s = settings
        self.log = log
        self.out = os.path.abspath(settings.outdir)
        self.paths = dnnlib.EasyDict(
            data=os.path.join(self.out, 'data'), gan=os.path.join(self.out, 'gan'),
            checkpoint=os.path.join(self.out, 'checkpoints', 'demo.pkl'), exp=os.path.join(self.out, 'interpreter'),
            logs=os.path.join(self.out, 'logs'), state=os.path.join(self.out, 'demo_state.json'),
            annotator=os.path.join(self.out, 'annotator'))
        self.paths.annotations = os.path.join(self.paths.exp, 'eyes_annotated')
        self.paths.processed = os.path.join(self.paths.exp, 'eyes_processed')
        self.paths.samples = os.path.join(self.paths.exp, 'samples')
        self.paths.generate_json = os.path.join(self.paths.exp, 'generate.json')
        self.paths.train_json = os.path.join(self.paths.exp, 'train_datagan.json')
        self.paths.overview = os.path.join(self.out, 'overview.png')
        self.paths.reference = os.path.join(self.paths.exp, 'samples_annotator')
        self.paths.real_test = os.path.join(self.out, 'real_test')
        self.paths.seg = os.path.join(self.out, 'segmentation')
        self.steps = [
            Step('dataset', 'make the demo dataset (RGB + NIR eyes)', self.make_dataset),
            Step('train_gan', 'train the dual-branch GAN (tiny config)', self.train_gan),
            Step('sample', 'sample images to annotate', self.sample),
            Step('annotate', "annotate 8 of them (a U-Net taught by the demo set's true masks stands in for a person)",
                 self.annotate),
            Step('import', 'import the annotations', self.import_annotations),
            Step('train_interpreter', 'train the interpreter (ensemble of pixel classifiers)', self.train_interpreter),
            Step('generate', 'generate the annotated RGB + NIR dataset', self.generate),
            Step('evaluate_masks', 'score the generated masks against the annotator', self.evaluate_masks),
            Step('downstream', 'train segmenters on synthetic vs 8 annotated pairs, test on real eyes',
                 self.downstream),
            Step('overview', 'write the overview image and the summary', self.overview),
        ]

    # ------------------------------------------------------------------------------------------------ running

    def _state(self):
        if os.path.isfile(self.paths.state):
            with open(self.paths.state) as f:
                return json.load(f)
        return dict(settings=None, steps={})

    def _save_state(self, state):
        with dnnlib.util.atomic_write(self.paths.state, 'w') as f:
            json.dump(state, f, indent=2)

    def run(self, fresh=False):
        """Run every step not yet done; returns the summary dict."""
        settings = {k: v for k, v in vars(self.s).items() if k != 'outdir'}
        if fresh and os.path.isdir(self.out):
            shutil.rmtree(self.out)
        os.makedirs(self.paths.logs, exist_ok=True)
        state = self._state()
        if state['settings'] not in (None, settings):
            raise DemoError(f'{self.paths.state}: this folder holds a demo run with other settings '
                            f'({state["settings"]}); use --fresh or another --outdir')
        state['settings'] = settings
        self._save_state(state)
        start = time.time()
        for k, step in enumerate(self.steps, 1):
            done = state['steps'].get(step.name)
            if done:
                self.log(f'[{k}/{len(self.steps)}] {step.title}: done earlier ({done["seconds"]:.1f} s)')
                continue
            self.log(f'[{k}/{len(self.steps)}] {step.title} ...')
            t0 = time.time()
            command = step.run()
            seconds = time.time() - t0
            state['steps'][step.name] = dict(seconds=round(seconds, 2), command=command)
            self._save_state(state)
            self.log(f'      done in {seconds:.1f} s')
        summary = self._summary(state, time.time() - start)
        return summary

    def _command(self, step, args, progress=None):
        """Run one CLI command, its output to the step's log only; ``progress()``, polled while it runs, returns
        lines to show (read from files the step writes)."""
        log_path = os.path.join(self.paths.logs, f'{step}.log')
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        self.log('      $ ' + _display(args))
        with open(log_path, 'w') as log:
            proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            while True:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=POLL_S)
                for line in progress() if progress else ():
                    self.log(f'      {line}')
                if proc.returncode is not None:
                    break
        if proc.returncode != 0:
            raise DemoError(f'step {step} failed (exit code {proc.returncode}): {_failure_line(log_path)} '
                            f'(log: {log_path})')
        return args

    def _device(self, type_only=False):
        """``--device`` for a step's command: none when the demo was given none (each command then picks its own);
        ``type_only`` for a command that takes a device type (cpu, cuda) without an index."""
        if not self.s.device:
            return []
        return ['--device', self.s.device.split(':')[0] if type_only else self.s.device]

    # ------------------------------------------------------------------------------------------------- steps

    def make_dataset(self):
        return self._command('dataset', _python(
            'dataset_tool.py', 'demo', '--dest', self.paths.data, '--count', self.s.count, '--resolution',
            self.s.resolution, '--seed', self.s.seed, '--overwrite'))

    def _latest_snapshot(self):
        """The newest snapshot (with its training state) of the newest GAN run, or None."""
        runs = sorted(d for d in glob.glob(os.path.join(self.paths.gan, '*')) if os.path.isdir(d))
        for run in reversed(runs):
            snapshot = latest_snapshot(run)
            if snapshot:
                return snapshot
        return None

    def train_gan(self):
        previous = self._latest_snapshot()
        if previous:  # an interrupted training: continue it exactly
            args = _python('train_db_stylegan2.py', '--outdir', self.paths.gan, '--resume', os.path.dirname(previous),
                           '--kimg', self.s.kimg)
        else:
            args = _python('train_db_stylegan2.py', '--outdir', self.paths.gan, '--data', self.paths.data, '--cfg',
                           'tiny', '--kimg', self.s.kimg, '--tick', 1, '--snap', 2, '--metrics', 'none', '--aug',
                           'noaug', '--mirror', 1, '--seed', self.s.seed, *self._device(type_only=True))
        self._command('train_gan', args, progress=_NewRecords(os.path.join(self.paths.gan, '*', 'stats.jsonl'),
                                                              _tick_line))
        snapshot = self._latest_snapshot()
        if snapshot is None:
            raise DemoError(f'step train_gan: no network snapshot in {self.paths.gan}')
        os.makedirs(os.path.dirname(self.paths.checkpoint), exist_ok=True)
        dnnlib.util.copy_atomic(snapshot, self.paths.checkpoint)
        return args

    def _write_configs(self):
        """The demo templates with this run's folder and checkpoint (absolute paths)."""
        os.makedirs(self.paths.exp, exist_ok=True)
        for name, dest in (('generate.json', self.paths.generate_json), ('train_datagan.json', self.paths.train_json)):
            with open(os.path.join(TEMPLATES, name)) as f:
                cfg = json.load(f)
            cfg.update(exp_dir=self.paths.exp, stylegan_checkpoint=self.paths.checkpoint, seed=self.s.seed)
            with dnnlib.util.atomic_write(dest, 'w') as f:
                json.dump(cfg, f, indent=2)

    def sample(self):
        self._write_configs()
        return self._command('sample', _python(
            'make_training_data.py', '--exp', self.paths.generate_json, '--sv_path', self.paths.exp, '--num_sample',
            self.s.num_annotate, '--seed', self.s.seed, '--png', '--overwrite', *self._device()))

    def _annotator(self):
        return auto_annotate.Annotator(os.path.join(self.paths.annotator, 'checkpoint-last.pt'),
                                       device=self.s.device or 'cpu')

    def annotate(self):
        command = self._command('annotator', _python(*auto_annotate.train_command(
            self.paths.data, self.paths.annotator, self.s.count, epochs=self.s.annotator_epochs, seed=self.s.seed),
            *self._device()))
        self.log(f'      {_last_epoch(self.paths.annotator, self.s.annotator_epochs)}')
        annotator = self._annotator()
        src = os.path.join(self.paths.exp, 'images_to_annotate')
        os.makedirs(self.paths.annotations, exist_ok=True)
        for i in ANNOTATED_IDS:
            rgb_path, nir_path = os.path.join(src, f'image_{i}.png'), os.path.join(src, f'image_{i}_NIR.png')
            rgb = np.asarray(PIL.Image.open(rgb_path).convert('RGB'))
            nir = np.asarray(PIL.Image.open(nir_path).convert('L'))
            mask = auto_annotate.colorize(annotator(rgb, nir))
            for path in (rgb_path, nir_path):
                dnnlib.util.copy_atomic(path, os.path.join(self.paths.annotations, os.path.basename(path)))
            with dnnlib.util.atomic_write(os.path.join(self.paths.annotations, f'image_{i}_mask.png'), 'wb') as f:
                PIL.Image.fromarray(mask, 'RGB').save(f, 'PNG')
        self.log(f'      wrote {len(ANNOTATED_IDS)} colour masks (ocular_4class palette) to '
                 f'{_shown(self.paths.annotations)}')
        return command

    def import_annotations(self):
        return self._command('import', _python(
            'prepare_annotations.py', '--input', self.paths.annotations, '--output', self.paths.processed,
            '--latents', os.path.join(self.paths.exp, 'latent_stylegan.npy'), '--ids',
            ','.join(map(str, ANNOTATED_IDS)), '--image-format', 'png', '--overwrite'))

    def train_interpreter(self):
        command = self._command('train_interpreter', _python(
            'train_interpreter.py', '--exp', self.paths.train_json, *self._device()))
        models = os.path.join(self.paths.exp, 'models')
        self.log(f'      {len(glob.glob(os.path.join(models, "model_*.pth")))} classifiers in {_shown(models)}')
        return command

    def generate(self):
        command = self._command('generate', _python(
            'train_interpreter.py', '--exp', self.paths.train_json, '--generate_data', 'True', '--num_sample',
            self.s.num_sample, '--resume', self.paths.exp, *self._device()))
        line = f'{len(finished_samples(self.paths.samples))} samples generated'
        rejected = os.path.join(self.paths.samples, 'rejected.jsonl')
        if os.path.isfile(rejected):
            kept = read_sample_list(os.path.join(self.paths.samples, 'kept.jsonl'))
            line += f'; {len(kept)} kept, {len(read_sample_list(rejected))} most uncertain listed in {_shown(rejected)}'
        self.log(f'      {line}')
        return command

    def evaluate_masks(self):
        """The annotator's labels of the kept generated images (none of them is one of the 8 annotated latents)
        are the reference the generated masks are scored against."""
        entries, _ = generated_samples(self.paths.samples)
        os.makedirs(self.paths.reference, exist_ok=True)
        annotator = self._annotator()
        for e in entries:
            rgb = np.asarray(PIL.Image.open(os.path.join(self.paths.samples, e['rgb'])).convert('RGB'))
            nir = np.asarray(PIL.Image.open(os.path.join(self.paths.samples, e['nir'])).convert('L'))
            name = os.path.splitext(os.path.basename(e['mask']))[0] + '.png'
            with dnnlib.util.atomic_write(os.path.join(self.paths.reference, name), 'wb') as f:
                PIL.Image.fromarray(annotator(rgb, nir), 'L').save(f, 'PNG')
        self.log(f'      the annotator labelled {len(entries)} generated images into {_shown(self.paths.reference)}')
        command = self._command('evaluate_masks', _python(
            'train_interpreter.py', '--exp', self.paths.train_json, '--eval_masks', self.paths.reference, '--out',
            self.paths.samples, '--class_names', ','.join(CLASS_NAMES)))
        with open(os.path.join(self.paths.samples, 'mask_evaluation.json')) as f:
            report = json.load(f)
        self.log(f'      {len(report["samples"])} generated masks scored against the annotator: mIoU '
                 f'{report["miou"]:.4f}; report in {_shown(os.path.join(self.paths.samples, "mask_evaluation.md"))}')
        return command

    def _train_segmenter(self, name, data, repeat=1):
        # Inverse-frequency class weights: the pupil covers about 2 % of a 32x32 eye and is otherwise never predicted.
        run_dir = os.path.join(self.paths.seg, name)
        command = self._command(f'segment_{name}', _python(
            'train_segmentation.py', '--data', data, '--outdir', run_dir, '--arch', 'unet', '--width', 16, '--input',
            'rgbnir', '--epochs', self.s.seg_epochs, '--repeat', repeat, '--batch', 8, '--class_weights', 'inverse',
            '--class_names', ','.join(CLASS_NAMES), '--num_classes', len(CLASS_NAMES), '--seed', self.s.seed,
            '--resume', *self._device()))
        self.log(f'      {_last_epoch(run_dir, self.s.seg_epochs)}')
        return command

    def downstream(self):
        """The papers' experiment in small: one segmenter trained on the generated set, one on the 8 annotated
        pairs (as many optimiser steps), both tested on real demo eyes against the renderer's masks."""
        commands = [self._command('real_test', _python(
            'dataset_tool.py', 'demo', '--dest', self.paths.real_test, '--count', self.s.num_test, '--resolution',
            self.s.resolution, '--seed', self.s.seed + 1, '--overwrite'))]  # seed + 1: never seen by the GAN
        n = len(generated_samples(self.paths.samples)[0])
        repeat = max(1, round(n / len(ANNOTATED_IDS)))  # as many optimiser steps on the 8 pairs as on the n
        commands.append(self._command('eval_annotator', _python(  # the stand-in itself: the ceiling of the others
            'eval_segmentation.py', '--checkpoint', os.path.join(self.paths.annotator, 'checkpoint-last.pt'),
            '--data', self.paths.real_test, '--outdir', self.paths.annotator, '--name', 'eval_real', '--class-map',
            CLASS_MAP, *self._device())))
        for name, data, rep in (('synthetic', self.paths.samples, 1), ('annotated', self.paths.processed, repeat)):
            commands.append(self._train_segmenter(name, data, rep))
            commands.append(self._command(f'eval_{name}', _python(
                'eval_segmentation.py', '--checkpoint', os.path.join(self.paths.seg, name, 'checkpoint-best.pt'),
                '--data', self.paths.real_test, '--outdir', os.path.join(self.paths.seg, name), '--name',
                'eval_real', '--class-map', CLASS_MAP, *self._device())))
        return commands

    def overview(self):
        write_overview(self.paths.overview, self.paths.processed, self.paths.samples,
                       tables=evaluation_lines(self._evaluation(), CLASS_NAMES))
        return None

    def _evaluation(self):
        """``{row title: scores}`` of the evaluation steps that have run."""
        found = {}
        for title, path in (('the stand-in annotator itself, on real eyes',
                             os.path.join(self.paths.annotator, 'eval_real.json')),
                            ('generated masks vs annotator (held-out generated images)',
                             os.path.join(self.paths.samples, 'mask_evaluation.json')),
                            ('segmenter trained on the generated set, on real eyes',
                             os.path.join(self.paths.seg, 'synthetic', 'eval_real.json')),
                            ('segmenter trained on the 8 annotated pairs, on real eyes',
                             os.path.join(self.paths.seg, 'annotated', 'eval_real.json'))):
            if os.path.isfile(path):
                with open(path) as f:
                    found[title] = json.load(f)
        return found

    # ---------------------------------------------------------------------------------------------- summary

    def _summary(self, state, wall):
        entries, source = generated_samples(self.paths.samples)
        kept = len(entries) if source == 'kept.jsonl' else None
        generated = len(glob.glob(os.path.join(self.paths.samples, 'RGB', '*.png')))
        where = {
            'overview image': self.paths.overview,
            'demo dataset (RGB, NIR, masks)': self.paths.data,
            'GAN run (snapshots, fakes*.png grids, log.txt)': self.paths.gan,
            'images sampled for annotation': os.path.join(self.paths.exp, 'images_to_annotate'),
            'the stand-in annotator (its run, eval_real.md on real eyes)': self.paths.annotator,
            'the automatic annotations (colour masks)': self.paths.annotations,
            'imported masks (image_mask{k}.npy)': self.paths.processed,
            'interpreter models (model_{k}.pth) and train_data.jpg': os.path.join(self.paths.exp, 'models'),
            'generated dataset (RGB/, NIR/, masks/, masks_color/, kept.jsonl)': self.paths.samples,
            'generated masks scored against the annotator (mask_evaluation.md)': self.paths.samples,
            'segmenters (runs, curves.png, eval_real.md / .png on real eyes)': self.paths.seg,
            'step logs': self.paths.logs,
        }
        steps = [dict(step=s.name, title=s.title, seconds=state['steps'][s.name]['seconds'],
                      command=state['steps'][s.name]['command']) for s in self.steps]
        summary = dict(total_seconds=round(sum(x['seconds'] for x in steps), 1), wall_seconds_this_run=round(wall, 1),
                       generated_samples=generated, kept_after_uncertainty_filter=kept, settings=state['settings'],
                       steps=steps, where=where)
        return write_summary(self.out, summary, self._evaluation(), CLASS_NAMES, os.path.relpath(CLASS_MAP, REPO))


def run_demo(settings: Settings, fresh=False, log=print):
    """Run the demo (or what is left of it), then show where to look; returns the summary dict."""
    demo = Demo(settings, log=log)
    summary = demo.run(fresh=fresh)
    log('')
    log(f'Demo finished: {summary["total_seconds"]:.0f} s of steps; {summary["generated_samples"]} annotated '
        f'RGB + NIR pairs generated, {summary["kept_after_uncertainty_filter"]} kept after the uncertainty filter.')
    log('Where to look:')
    for what, where in summary['where'].items():
        log(f'  {what:<66} {where}')
    log(f'  {"summary (times per step, the commands)":<66} {demo.out}/summary.md')
    return summary


# ------------------------------------------------------------------------------------------- what steps wrote


def _failure_line(log_path):
    """Why a step failed: its ``error: ...`` line (every command's convention, dnnlib.cli), else its last line."""
    with open(log_path, errors='replace') as f:  # universal newlines: a progress bar's \r updates are lines too
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith('error:')]
    return (errors or lines or [''])[-1]


class _NewRecords:
    """The records appended to JSON-lines files (a glob) since the last call, each as ``describe(record)``: a
    running step's progress as the step itself writes it."""

    def __init__(self, pattern, describe):
        self.pattern, self.describe = pattern, describe
        self.offset = {path: self._complete(path, 0)[1] for path in glob.glob(pattern)}  # bytes already shown

    @staticmethod
    def _complete(path, offset):
        """The complete lines after byte ``offset`` (the last one may be half written) and the offset after them."""
        with open(path, 'rb') as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b'\n') + 1
        return data[:end].decode('utf-8').splitlines(), offset + end

    def __call__(self):
        shown = []
        for path in sorted(glob.glob(self.pattern)):
            lines, self.offset[path] = self._complete(path, self.offset.get(path, 0))
            shown += [self.describe(json.loads(line)) for line in lines if line.strip()]
        return shown


def _tick_line(stats):
    """A GAN training tick from its ``stats.jsonl`` record (``{name: {num, mean, std}}``)."""
    value = {name: v['mean'] for name, v in stats.items() if isinstance(v, dict)}
    return (f'tick {int(value["Progress/tick"])}  kimg {value["Progress/kimg"]:.1f}  time '
            f'{dnnlib.util.format_time(value["Timing/total_sec"])}  sec/kimg {value["Timing/sec_per_kimg"]:.2f}')


def _last_epoch(run_dir, epochs):
    """The last epoch of a ``train_segmentation.py`` run, from its ``history.json``."""
    with open(os.path.join(run_dir, 'history.json')) as f:
        entry = json.load(f)[-1]
    line = f'epoch {entry["epoch"]}/{epochs}  train loss {entry["train_loss"]:.4f}'
    if entry.get('val_miou') is not None:
        line += f'  val mIoU {entry["val_miou"]:.4f}'
    return line + f'  ({entry["seconds"]:.1f} s)'


# ---------------------------------------------------------------------------------------------------- summary


def evaluation_lines(evaluation, class_names):
    """One line per evaluation (``{title: scores}``): mIoU and the IoU of each of ``class_names``."""
    lines = []
    for title, s in evaluation.items():
        iou = {c['class']: c['iou'] for c in s['per_class']}
        lines.append(f'{title}: mIoU {s["miou"]:.3f} (' + ', '.join(
            f'{c} {"-" if iou.get(c) is None else format(iou[c], ".2f")}' for c in class_names) + ')')
    return lines


def write_summary(out_dir, summary, evaluation, class_names, class_map):
    """``summary.json`` and ``summary.md`` in ``out_dir``: ``summary`` (times, commands, where the files are) plus the
    ``evaluation`` scores (``{title: scores}``) over ``class_names``; ``class_map``: the class map's path as shown.
    Returns the summary as written."""
    summary = dict(summary)
    lines = ['# Demo run', '', f'Total time of the steps: {summary["total_seconds"]:.0f} s. '
             f'Generated {summary["generated_samples"]} annotated RGB + NIR pairs; '
             f'{summary["kept_after_uncertainty_filter"]} kept after the uncertainty filter.', '',
             '| step | seconds | command |', '|---|---:|---|']
    for x in summary['steps']:
        commands = x['command'] if x['command'] and isinstance(x['command'][0], list) else [x['command']]
        if x['command']:
            cmd = '<br>'.join(f'`{_display(c)}`' for c in commands)
        else:
            cmd = '(in-process)'
        lines.append(f'| {x["title"]} | {x["seconds"]:.1f} | {cmd} |')
    if evaluation:
        from segmentation.metrics import markdown_table
        lines += ['', '## How good are the masks?', '',
                  "The stand-in annotator (a U-Net trained on the demo training pairs' true masks, "
                  '`pipeline/auto_annotate.py`) on the real test eyes: the ceiling of everything below. '
                  "Mask generator: its masks of the kept generated images against the stand-in annotator's "
                  'labels of the same images. Downstream: a U-Net (RGB + NIR input) trained on the generated '
                  'dataset and one trained on only the 8 annotated pairs (as many optimiser steps), both tested '
                  "on real demo eyes rendered with a seed the GAN never saw, against the renderer's true masks "
                  f'(class map `{class_map}`).', '',
                  markdown_table(evaluation, list(class_names))]
        summary['evaluation'] = {k: dict(miou=v['miou'], iou={c['class']: c['iou'] for c in v['per_class']})
                                 for k, v in evaluation.items()}
    with dnnlib.util.atomic_write(os.path.join(out_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    lines += ['', '| what | where |', '|---|---|'] + [f'| {k} | `{v}` |' for k, v in summary['where'].items()]
    with dnnlib.util.atomic_write(os.path.join(out_dir, 'summary.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return summary


# ---------------------------------------------------------------------------------------------------- overview


def _tile(array, size):
    im = PIL.Image.fromarray(array)
    return im.convert('RGB').resize((size, size), PIL.Image.NEAREST)


def write_overview(path, processed_dir, samples_dir, columns=12, tile=96, tables=()):
    """A grid: the annotated pairs of ``processed_dir`` (RGB, NIR, the imported mask) above the generated ones of
    ``samples_dir`` (RGB, NIR, mask), taken from ``kept.jsonl`` (or every sample) in index order, at most ``columns``
    of each; ``tables``: lines of text below. Masks in the annotation palette (ocular_4class: iris blue, pupil red,
    sclera green, background black)."""
    annotated = []
    while len(annotated) < columns:
        k = len(annotated)
        mask_path = os.path.join(processed_dir, f'image_mask{k}.npy')
        if not os.path.isfile(mask_path):
            break
        rgb = np.asarray(PIL.Image.open(glob.glob(os.path.join(processed_dir, f'image_{k}.*'))[0]).convert('RGB'))
        nir = np.asarray(PIL.Image.open(glob.glob(os.path.join(processed_dir, f'image_{k}_NIR.*'))[0]).convert('L'))
        annotated.append((rgb, nir, auto_annotate.colorize(np.load(mask_path))))
    entries, _ = generated_samples(samples_dir)
    entries = sorted(entries, key=lambda e: e['index'])[:columns]
    generated = [(np.asarray(PIL.Image.open(os.path.join(samples_dir, e['rgb']))),
                  np.asarray(PIL.Image.open(os.path.join(samples_dir, e['nir']))),
                  auto_annotate.colorize(np.asarray(PIL.Image.open(os.path.join(samples_dir, e['mask'])))))
                 for e in entries]
    pad, label_h = 4, 22
    blocks = [('annotated by the stand-in annotator (RGB / NIR / mask)', annotated),
              ("generated, with the interpreter's masks (RGB / NIR / mask)", generated)]
    width = pad + columns * (tile + pad)
    height = sum(label_h + 3 * (tile + pad) for _, rows in blocks if rows) + pad + 16 * len(tables) + (
        label_h if tables else 0)
    canvas = PIL.Image.new('RGB', (width, height), 'white')
    draw = PIL.ImageDraw.Draw(canvas)
    y = pad
    for title, items in blocks:
        if not items:
            continue
        draw.text((pad, y + 4), title, fill=(0, 0, 0))
        y += label_h
        for col, triple in enumerate(items[:columns]):
            for row, array in enumerate(triple):
                canvas.paste(_tile(array, tile), (pad + col * (tile + pad), y + row * (tile + pad)))
        y += 3 * (tile + pad)
    if tables:
        draw.text((pad, y + 4), 'How good are the masks? (mIoU and per-class IoU; see summary.md)', fill=(0, 0, 0))
        y += label_h
        for line in tables:
            draw.text((pad, y), line, fill=(0, 0, 0))
            y += 16
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with dnnlib.util.atomic_write(path, 'wb') as f:
        canvas.save(f, 'PNG')
    return path
