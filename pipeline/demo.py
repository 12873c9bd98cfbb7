"""The whole pipeline on the built-in demo eyes, on a CPU, as a sequence of the real commands.

Each step runs the project's own command line in a subprocess (so the demo shows exactly what a user types), with
its output in ``<outdir>/logs/<step>.log``; the annotation step trains ``pipeline.auto_annotate``'s U-Net on the demo
set's true masks and lets it stand in for a person.
Finished steps are recorded in ``<outdir>/demo_state.json`` and skipped when the demo is run again (an interrupted
GAN training continues from its last snapshot). At the end: ``overview.png`` (annotated and generated pairs: RGB,
NIR, mask) and ``summary.json`` / ``summary.md`` (time per step, the commands, where the files are).
"""

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
from interpreter.generate import finished_samples
from pipeline import auto_annotate
from training.training_loop import latest_snapshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(REPO, 'EXPERIMENTS', 'interpreter', 'demo')
ANNOTATED_IDS = list(range(8))
CLASS_NAMES = auto_annotate.CLASS_NAMES  # ocular_4class, the annotations' numbering
CLASS_MAP = auto_annotate.CLASS_MAP  # the renderer's numbering into it


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
            Step('annotate', 'annotate 8 of them (a U-Net taught by the demo set\'s true masks stands in for a person)',
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

    def _command(self, step, args, echo=lambda line: line.startswith('tick ')):
        """Run one CLI command, its output to the step's log; lines for which ``echo`` is true are shown."""
        log_path = os.path.join(self.paths.logs, f'{step}.log')
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        self.log('      $ ' + _display(args))
        last = error = ''
        with open(log_path, 'w') as log:
            proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1)
            for line in proc.stdout:
                log.write(line)
                text = line.rstrip('\n').split('\r')[-1].strip()
                if text:
                    last = text
                    error = text if text.startswith('error:') else error
                    if echo(text):
                        self.log(f'      {text}')
            proc.wait()
        if proc.returncode != 0:
            reason = error or last
            raise DemoError(f'step {step} failed (exit code {proc.returncode}): {reason} (log: {log_path})')
        return args

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
        device = ['--device', self.s.device.split(':')[0]] if self.s.device else []
        if previous:  # an interrupted training: continue it exactly
            args = _python('train_db_stylegan2.py', '--outdir', self.paths.gan, '--resume', os.path.dirname(previous),
                           '--kimg', self.s.kimg)
        else:
            args = _python('train_db_stylegan2.py', '--outdir', self.paths.gan, '--data', self.paths.data, '--cfg',
                           'tiny', '--kimg', self.s.kimg, '--tick', 1, '--snap', 2, '--metrics', 'none', '--aug',
                           'noaug', '--mirror', 1, '--seed', self.s.seed, *device)
        self._command('train_gan', args)
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

    def _device(self):
        return ['--device', self.s.device] if self.s.device else []

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
            *self._device()), echo=lambda line: line.startswith(f'epoch {self.s.annotator_epochs}/'))
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
        return self._command('train_interpreter', _python(
            'train_interpreter.py', '--exp', self.paths.train_json, *self._device()),
            echo=lambda line: line.startswith(('model ', 'classifier')) or 'classifiers in' in line)

    def generate(self):
        return self._command('generate', _python(
            'train_interpreter.py', '--exp', self.paths.train_json, '--generate_data', 'True', '--num_sample',
            self.s.num_sample, '--resume', self.paths.exp, *self._device()),
            echo=lambda line: 'kept' in line or line.startswith('ensemble step'))

    def evaluate_masks(self):
        """The annotator's labels of the kept generated images (none of them is one of the 8 annotated latents)
        are the reference the generated masks are scored against."""
        kept = os.path.join(self.paths.samples, 'kept.jsonl')
        entries = _read_jsonl(kept) if os.path.isfile(kept) else list(finished_samples(self.paths.samples).values())
        os.makedirs(self.paths.reference, exist_ok=True)
        annotator = self._annotator()
        for e in entries:
            rgb = np.asarray(PIL.Image.open(os.path.join(self.paths.samples, e['rgb'])).convert('RGB'))
            nir = np.asarray(PIL.Image.open(os.path.join(self.paths.samples, e['nir'])).convert('L'))
            name = os.path.splitext(os.path.basename(e['mask']))[0] + '.png'
            with dnnlib.util.atomic_write(os.path.join(self.paths.reference, name), 'wb') as f:
                PIL.Image.fromarray(annotator(rgb, nir), 'L').save(f, 'PNG')
        self.log(f'      the annotator labelled {len(entries)} generated images into {_shown(self.paths.reference)}')
        return self._command('evaluate_masks', _python(
            'train_interpreter.py', '--exp', self.paths.train_json, '--eval_masks', self.paths.reference, '--out',
            self.paths.samples, '--class_names', ','.join(CLASS_NAMES)), echo=lambda line: 'mIoU' in line)

    def _train_segmenter(self, name, data, repeat=1):
        # Inverse-frequency class weights: the pupil covers about 2 % of a 32x32 eye and is otherwise never predicted.
        epochs = self.s.seg_epochs
        return self._command(f'segment_{name}', _python(
            'train_segmentation.py', '--data', data, '--outdir', os.path.join(self.paths.seg, name), '--arch', 'unet',
            '--width', 16, '--input', 'rgbnir', '--epochs', epochs, '--repeat', repeat, '--batch', 8,
            '--class_weights', 'inverse', '--class_names', ','.join(CLASS_NAMES), '--num_classes', len(CLASS_NAMES),
            '--seed', self.s.seed, '--resume', *self._device()),
            echo=lambda line: line.startswith(f'epoch {epochs}/{epochs}'))

    def downstream(self):
        """The papers' experiment in small: one segmenter trained on the generated set, one on the 8 annotated
        pairs (as many optimiser steps), both tested on real demo eyes against the renderer's masks."""
        commands = [self._command('real_test', _python(
            'dataset_tool.py', 'demo', '--dest', self.paths.real_test, '--count', self.s.num_test, '--resolution',
            self.s.resolution, '--seed', self.s.seed + 1, '--overwrite'))]  # seed + 1: never seen by the GAN
        kept = os.path.join(self.paths.samples, 'kept.jsonl')
        n = len(_read_jsonl(kept)) if os.path.isfile(kept) else len(finished_samples(self.paths.samples))
        repeat = max(1, round(n / len(ANNOTATED_IDS)))  # as many optimiser steps on the 8 pairs as on the n
        commands.append(self._command('eval_annotator', _python(  # the stand-in itself: the ceiling of the others
            'eval_segmentation.py', '--checkpoint', os.path.join(self.paths.annotator, 'checkpoint-last.pt'),
            '--data', self.paths.real_test, '--outdir', self.paths.annotator, '--name', 'eval_real', '--class-map',
            CLASS_MAP, *self._device()), echo=lambda line: False))
        for name, data, rep in (('synthetic', self.paths.samples, 1), ('annotated', self.paths.processed, repeat)):
            commands.append(self._train_segmenter(name, data, rep))
            commands.append(self._command(f'eval_{name}', _python(
                'eval_segmentation.py', '--checkpoint', os.path.join(self.paths.seg, name, 'checkpoint-best.pt'),
                '--data', self.paths.real_test, '--outdir', os.path.join(self.paths.seg, name), '--name',
                'eval_real', '--class-map', CLASS_MAP, *self._device()), echo=lambda line: False))
        return commands

    def overview(self):
        write_overview(self.paths.overview, self.paths.processed, self.paths.samples, tables=self._evaluation_rows())
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

    def _evaluation_rows(self):
        rows = []
        for title, s in self._evaluation().items():
            iou = {c['class']: c['iou'] for c in s['per_class']}
            rows.append(f'{title}: mIoU {s["miou"]:.3f} (' + ', '.join(
                f'{c} {"-" if iou.get(c) is None else format(iou[c], ".2f")}' for c in CLASS_NAMES) + ')')
        return rows

    # ---------------------------------------------------------------------------------------------- summary

    def _summary(self, state, wall):
        kept_path = os.path.join(self.paths.samples, 'kept.jsonl')
        kept = len(_read_jsonl(kept_path)) if os.path.isfile(kept_path) else None
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
        with dnnlib.util.atomic_write(os.path.join(self.out, 'summary.json'), 'w') as f:
            json.dump(summary, f, indent=2)
        lines = ['# Demo run', '', f'Total time of the steps: {summary["total_seconds"]:.0f} s. '
                 f'Generated {generated} annotated RGB + NIR pairs; {kept} kept after the uncertainty filter.', '',
                 '| step | seconds | command |', '|---|---:|---|']
        for x in steps:
            commands = x['command'] if x['command'] and isinstance(x['command'][0], list) else [x['command']]
            if x['command']:
                cmd = '<br>'.join(f'`{_display(c)}`' for c in commands)
            else:
                cmd = '(in-process)'
            lines.append(f'| {x["title"]} | {x["seconds"]:.1f} | {cmd} |')
        evaluation = self._evaluation()
        if evaluation:
            from segmentation.metrics import markdown_table
            lines += ['', '## How good are the masks?', '',
                      'The stand-in annotator (a U-Net trained on the demo training pairs\' true masks, '
                      '`pipeline/auto_annotate.py`) on the real test eyes: the ceiling of everything below. '
                      'Mask generator: its masks of the kept generated images against the stand-in annotator\'s '
                      'labels of the same images. Downstream: a U-Net (RGB + NIR input) trained on the generated '
                      'dataset and one trained on only the 8 annotated pairs (as many optimiser steps), both tested '
                      'on real demo eyes rendered with a seed the GAN never saw, against the renderer\'s true masks '
                      f'(class map `{os.path.relpath(CLASS_MAP, REPO)}`).', '',
                      markdown_table(evaluation, list(CLASS_NAMES))]
            summary['evaluation'] = {k: dict(miou=v['miou'], iou={c['class']: c['iou'] for c in v['per_class']})
                                     for k, v in evaluation.items()}
            with dnnlib.util.atomic_write(os.path.join(self.out, 'summary.json'), 'w') as f:
                json.dump(summary, f, indent=2)
        lines += ['', '| what | where |', '|---|---|'] + [f'| {k} | `{v}` |' for k, v in where.items()]
        with dnnlib.util.atomic_write(os.path.join(self.out, 'summary.md'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
        return summary


# ---------------------------------------------------------------------------------------------------- overview


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _tile(array, size):
    im = PIL.Image.fromarray(array)
    return im.convert('RGB').resize((size, size), PIL.Image.NEAREST)


def write_overview(path, processed_dir, samples_dir, columns=12, tile=96, tables=()):
    """A grid: the annotated pairs (RGB, NIR, the imported mask) above the generated ones (RGB, NIR, mask), the
    generated ones taken from ``kept.jsonl`` (or every sample) in index order. Masks in the annotation palette
    (ocular_4class: iris blue, pupil red, sclera green, background black)."""
    annotated = []
    for k in range(len(ANNOTATED_IDS)):
        mask_path = os.path.join(processed_dir, f'image_mask{k}.npy')
        if not os.path.isfile(mask_path):
            break
        rgb = np.asarray(PIL.Image.open(glob.glob(os.path.join(processed_dir, f'image_{k}.*'))[0]).convert('RGB'))
        nir = np.asarray(PIL.Image.open(glob.glob(os.path.join(processed_dir, f'image_{k}_NIR.*'))[0]).convert('L'))
        annotated.append((rgb, nir, auto_annotate.colorize(np.load(mask_path))))
    kept = os.path.join(samples_dir, 'kept.jsonl')
    entries = _read_jsonl(kept) if os.path.isfile(kept) else list(finished_samples(samples_dir).values())
    entries = sorted(entries, key=lambda e: e['index'])[:columns]
    generated = [(np.asarray(PIL.Image.open(os.path.join(samples_dir, e['rgb']))),
                  np.asarray(PIL.Image.open(os.path.join(samples_dir, e['nir']))),
                  auto_annotate.colorize(np.asarray(PIL.Image.open(os.path.join(samples_dir, e['mask'])))))
                 for e in entries]
    pad, label_h = 4, 22
    blocks = [('annotated by the stand-in annotator (RGB / NIR / mask)', annotated),
              ('generated, with the interpreter\'s masks (RGB / NIR / mask)', generated)]
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
