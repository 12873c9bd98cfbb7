"""Segmentation training and evaluation end to end, on tiny CPU models: a U-Net learns a rule dataset, a killed and
resumed run equals an uninterrupted one bit for bit, checkpoint-best.pt is the best validation epoch, the CLIs turn
bad input into one-line errors naming the file, and eval_segmentation.py scores (with class maps) match an
independent recomputation."""

import json
import os
import shutil

import numpy as np
import PIL.Image
import pytest
import torch

import eval_segmentation
import train_segmentation
from conftest import assert_one_line_error
from segmentation.evaluate import evaluate_checkpoint
from segmentation.models import build_model
from segmentation.train import Run, SegmentationError, TrainOptions, class_weights, poly_lr
from training.demo_eyes import DEMO_CLASSES, write_demo_dataset

QUIET = dict(progress=False, log=lambda s: None)
RULE_CLASSES = ['background', 'square', 'disk']


pytestmark = pytest.mark.usefixtures('one_torch_thread')


# --------------------------------------------------------------------------------------------------- data helpers


def write_rule_set(dest, count, seed, res=32):
    """A paired set whose classes follow a pixel rule: a square bright in RGB and NIR (class 1) and a disk bright in
    NIR only (class 2, drawn over the square) on a dark noisy background (class 0)."""
    rng = np.random.default_rng(seed)
    for sub in ('images', 'NIR', 'masks'):
        os.makedirs(os.path.join(dest, sub), exist_ok=True)
    yy, xx = np.mgrid[:res, :res]
    for i in range(count):
        mask = np.zeros((res, res), np.uint8)
        s = rng.integers(8, 15)
        y0, x0 = rng.integers(0, res - s, 2)
        mask[y0:y0 + s, x0:x0 + s] = 1
        r = rng.integers(4, 7)
        cy, cx = rng.integers(r, res - r, 2)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
        rgb = rng.integers(0, 60, (res, res, 3))
        nir = rng.integers(0, 60, (res, res))
        rgb[mask == 1] += 150
        nir[mask >= 1] += 150
        name = f'p{i:03d}.png'
        PIL.Image.fromarray(rgb.astype(np.uint8)).save(os.path.join(dest, 'images', name))
        PIL.Image.fromarray(nir.astype(np.uint8)).save(os.path.join(dest, 'NIR', name))
        PIL.Image.fromarray(mask).save(os.path.join(dest, 'masks', name))
    with open(os.path.join(dest, 'classes.json'), 'w') as f:
        json.dump({'classes': RULE_CLASSES}, f)
    return str(dest)


def read_mask(path):
    return np.asarray(PIL.Image.open(path)).astype(np.int64)


def mask_files(root):
    return sorted(os.path.join(root, 'masks', n) for n in os.listdir(os.path.join(root, 'masks')))


def copy_set(src, dest, mask_fn=None, classes='copy'):
    """Copy a paired set, rewriting each mask as ``mask_fn(mask, index)``; ``classes``: 'copy', None (no
    classes.json) or a list of names."""
    shutil.copytree(os.path.join(src, 'images'), os.path.join(dest, 'images'))
    shutil.copytree(os.path.join(src, 'NIR'), os.path.join(dest, 'NIR'))
    os.makedirs(os.path.join(dest, 'masks'))
    for i, path in enumerate(mask_files(src)):
        m = read_mask(path)
        if mask_fn is not None:
            m = mask_fn(m, i)
        PIL.Image.fromarray(m.astype(np.uint8), 'L').save(os.path.join(dest, 'masks', os.path.basename(path)))
    if classes == 'copy':
        shutil.copy(os.path.join(src, 'classes.json'), os.path.join(dest, 'classes.json'))
    elif classes is not None:
        with open(os.path.join(dest, 'classes.json'), 'w') as f:
            json.dump({'classes': list(classes)}, f)
    return str(dest)


def load_pairs(root):
    """uint8 [N, 4, H, W] (R, G, B, NIR) and int64 masks [N, H, W] of a paired folder, read with PIL alone."""
    names = sorted(os.listdir(os.path.join(root, 'masks')))
    images, masks = [], []
    for n in names:
        rgb = np.asarray(PIL.Image.open(os.path.join(root, 'images', n)).convert('RGB'))
        nir = np.asarray(PIL.Image.open(os.path.join(root, 'NIR', n)))
        images.append(np.concatenate([rgb.transpose(2, 0, 1), nir[None]]))
        masks.append(read_mask(os.path.join(root, 'masks', n)))
    return np.stack(images), np.stack(masks)


def reference_confusion(ckpt_path, root, k, truth_fn=None):
    """The checkpoint's confusion matrix on ``root``, computed here: weights loaded by hand, inputs scaled to
    [-1, 1], argmax, numpy counting of the non-255 truth pixels."""
    ckpt = torch.load(ckpt_path, map_location='cpu', weights_only=True)
    model = build_model(**ckpt['model_config'])
    model.load_state_dict(ckpt['model'])
    model.eval()
    images, truth = load_pairs(root)
    if truth_fn is not None:
        truth = truth_fn(truth)
    with torch.no_grad():
        pred = model(torch.from_numpy(images).float() / 255 * 2 - 1).argmax(1).numpy()
    valid = truth != 255
    m = np.zeros((k, k), np.int64)
    np.add.at(m, (truth[valid], pred[valid]), 1)
    return m


def miou_from_matrix(m):
    m = np.asarray(m, np.float64)
    tp, t, p = np.diag(m), m.sum(1), m.sum(0)
    union = t + p - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


# ------------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    return tmp_path_factory.mktemp('seg')


@pytest.fixture(scope='module')
def demo(work):
    """Demo eyes (renderer numbering 0 background, 1 sclera, 2 iris, 3 pupil): a training and a test set."""
    train = write_demo_dataset(work / 'demo_train', count=16, resolution=32, seed=0)['dest']
    test = write_demo_dataset(work / 'demo_test', count=6, resolution=32, seed=5)['dest']
    return {'train': train, 'test': test}


@pytest.fixture(scope='module')
def rule(work):
    return {'train': write_rule_set(work / 'rule_train', 48, seed=0),
            'val': write_rule_set(work / 'rule_val', 12, seed=1),
            'test': write_rule_set(work / 'rule_test', 16, seed=2)}


@pytest.fixture(scope='module')
def demo_ckpt(work, demo):
    """A 4-class rgbnir U-Net trained through the CLI for one epoch."""
    out = work / 'run_demo'
    code = train_segmentation.main(['--data', demo['train'], '--outdir', str(out), '--arch', 'unet', '--width', '4',
                                    '--depth', '2', '--epochs', '2', '--batch', '4', '--device', 'cpu'])
    assert code == 0
    return str(out / 'checkpoint-best.pt')


def tiny_options(data, outdir, **kw):
    args = dict(data=str(data), outdir=str(outdir), arch='unet', width=4, depth=2, epochs=3, batch=4, device='cpu',
                seed=3)
    args.update(kw)
    return TrainOptions(**args)


def without_seconds(history):
    return [{k: v for k, v in h.items() if k != 'seconds'} for h in history]


def assert_same_weights(a, b):
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------------- learning


def test_tiny_unet_learns_the_rule_dataset(work, rule):
    out = work / 'learn'
    opts = TrainOptions(data=rule['train'], outdir=str(out), arch='unet', width=8, depth=2, epochs=12, batch=4,
                        device='cpu', seed=0)
    history = Run(opts, **QUIET).run()
    assert len(history) == 12 and history[-1]['train_loss'] < history[0]['train_loss']
    report = evaluate_checkpoint(out / 'checkpoint-last.pt', rule['test'], device='cpu')
    # Chance level: predicting background everywhere scores background's pixel share / 3 (the others 0).
    _, truth = load_pairs(rule['test'])
    all_background = np.mean(truth == 0) / 3
    assert all_background < 0.3
    # Measured: 0.98 (0.979-0.985 over training seeds 0-5); 0.85 leaves margin for other platforms.
    assert report['miou'] > 0.85, report
    assert min(c['iou'] for c in report['per_class']) > 0.7, report['per_class']
    np.testing.assert_array_equal(report['confusion_matrix'], reference_confusion(out / 'checkpoint-last.pt',
                                                                                   rule['test'], 3))


def test_poly_lr_and_class_weights():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9, rel=1e-12)
    assert poly_lr(0.01, 99, 100) == pytest.approx(0.01 * 0.01 ** 0.9, rel=1e-12)
    assert poly_lr(0.01, 500, 100) == poly_lr(0.01, 99, 100) > 0  # never reaches 0 or goes negative
    counts = np.array([600, 300, 100, 0])
    assert class_weights(counts, 'none') is None
    inverse = class_weights(counts, 'inverse').numpy()
    # 1 / frequency, scaled so the pixel-weighted mean is 1: w = (1/f) / K_present; an absent class gets 0.
    np.testing.assert_allclose(inverse, [1 / 0.6 / 3, 1 / 0.3 / 3, 1 / 0.1 / 3, 0], rtol=1e-6)
    sqrt = class_weights(counts, 'sqrt').numpy()
    raw = np.array([0.6 ** -0.5, 0.3 ** -0.5, 0.1 ** -0.5, 0])
    np.testing.assert_allclose(sqrt, raw / (raw * counts / counts.sum()).sum(), rtol=1e-6)
    with pytest.raises(ValueError):
        class_weights(counts, 'log')


# ----------------------------------------------------------------------------------------------------- resuming


class Killed(Exception):
    pass


def _kill_after(epoch):
    def hook(done):
        if done == epoch:
            raise Killed
    return hook


@pytest.mark.parametrize('arch', ['unet', 'deeplabv3_resnet18'])  # DeepLab: dropout's random stream too
def test_resume_after_kill_equals_uninterrupted(work, demo, arch):
    kw = dict(arch=arch, val_fraction=0.25, scale=1.5, jitter=0.3)
    a = work / f'resume_a_{arch}'
    history_a = Run(tiny_options(demo['train'], a, **kw), **QUIET).run()
    b = work / f'resume_b_{arch}'
    with pytest.raises(Killed):
        Run(tiny_options(demo['train'], b, **kw), on_epoch_end=_kill_after(2), **QUIET).run()
    assert torch.load(b / 'checkpoint-last.pt', weights_only=True)['epoch'] == 2
    history_b = Run(tiny_options(demo['train'], b, **kw), resume=True, **QUIET).run()
    assert [h['epoch'] for h in history_b] == [1, 2, 3]
    assert without_seconds(history_a) == without_seconds(history_b)
    assert all('val_miou' in h for h in history_b)
    ckpt_a = torch.load(a / 'checkpoint-last.pt', weights_only=True)
    ckpt_b = torch.load(b / 'checkpoint-last.pt', weights_only=True)
    assert ckpt_a['epoch'] == ckpt_b['epoch'] == 3
    assert_same_weights(ckpt_a['model'], ckpt_b['model'])
    assert without_seconds(json.loads((b / 'history.json').read_text())) == without_seconds(history_a)
    # The poly schedule ran to its last step: 12 training pairs (4 held out), batch 4 -> 3 steps x 3 epochs.
    for ckpt in (ckpt_a, ckpt_b):
        assert ckpt['optimizer']['param_groups'][0]['lr'] == pytest.approx(1e-2 * (1 - 8 / 9) ** 0.9, rel=1e-12)
    # The weights did move: a resumed run that silently restarted from scratch or skipped training would differ.
    first = build_model(**ckpt_a['model_config']).state_dict()
    assert any(not torch.equal(first[k], ckpt_a['model'][k]) for k in first if first[k].is_floating_point())


def test_same_seed_same_run_other_seed_other_run(work, demo):
    weights = {}
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        torch.manual_seed(100 + len(weights))  # the global generator's state must not matter
        Run(tiny_options(demo['train'], work / f'seed_{name}', epochs=1, seed=seed), **QUIET).run()
        weights[name] = torch.load(work / f'seed_{name}' / 'checkpoint-last.pt', weights_only=True)['model']
    assert_same_weights(weights['a'], weights['b'])
    assert not torch.equal(weights['a']['classifier.weight'], weights['c']['classifier.weight'])


def test_existing_run_needs_resume_and_the_same_options(work, demo, capsys):
    out = work / 'exists'
    Run(tiny_options(demo['train'], out, epochs=1), **QUIET).run()
    with pytest.raises(SegmentationError) as info:
        Run(tiny_options(demo['train'], out, epochs=1), **QUIET)
    assert str(out) in str(info.value) and '--resume' in str(info.value)
    with pytest.raises(SegmentationError) as info:
        Run(tiny_options(demo['train'], out, epochs=1, lr=0.05), resume=True, **QUIET).run()
    assert 'checkpoint-last.pt' in str(info.value) and 'lr' in str(info.value)
    # Through the CLI: one line, exit code 2, and the finished run untouched.
    before = (out / 'checkpoint-last.pt').read_bytes()
    argv = ['--data', demo['train'], '--outdir', str(out), '--width', '4', '--depth', '2', '--epochs', '1',
            '--device', 'cpu', '--seed', '3', '--batch', '4']
    assert_one_line_error(train_segmentation.main(argv), capsys.readouterr().err, str(out), '--resume')
    assert_one_line_error(train_segmentation.main(argv + ['--resume', '--lr', '0.05']), capsys.readouterr().err,
                          'checkpoint-last.pt', 'lr')
    assert (out / 'checkpoint-last.pt').read_bytes() == before


# -------------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_best_is_the_best_validation_epoch(work, rule):
    out = work / 'best'
    opts = TrainOptions(data=rule['train'], outdir=str(out), val=rule['val'], arch='unet', width=8, depth=2,
                        epochs=3, batch=4, device='cpu', seed=0)
    run = Run(opts, **QUIET)
    snapshots = {}

    def hook(epoch):
        # Every checkpoint is plain data: it loads with weights_only=True.
        snapshots[epoch] = torch.load(out / 'checkpoint-last.pt', weights_only=True)
        if epoch == 2:
            # Spoil the model so that epoch 3 scores far worse and checkpoint-best.pt must stay behind.
            with torch.no_grad():
                run.model.classifier.bias[0] += 1000
    run.on_epoch_end = hook
    history = run.run()
    scores = [h['val_miou'] for h in history]
    assert scores[2] < max(scores[:2]) - 0.1, scores  # the set-up worked: the last epoch is not the best
    best_epoch = 1 + int(np.argmax(scores))
    best = torch.load(out / 'checkpoint-best.pt', weights_only=True)
    assert best['epoch'] == best_epoch and best['best'] == {'epoch': best_epoch, 'miou': scores[best_epoch - 1]}
    assert_same_weights(best['model'], snapshots[best_epoch]['model'])
    last = torch.load(out / 'checkpoint-last.pt', weights_only=True)
    assert last['epoch'] == 3
    assert_same_weights(last['model'], snapshots[3]['model'])
    # The recorded validation mIoU is the best model's score on the validation set, recomputed here.
    assert miou_from_matrix(reference_confusion(out / 'checkpoint-best.pt', rule['val'], 3)) == pytest.approx(
        scores[best_epoch - 1], abs=1e-9)
    for key in ('format', 'model_config', 'model', 'optimizer', 'history', 'class_names', 'input', 'options'):
        assert key in best
    assert best['class_names'] == RULE_CLASSES and best['input'] == 'rgbnir'
    for name in ('options.json', 'log.txt', 'history.json', 'curves.png'):
        assert (out / name).is_file()
    assert len((out / 'log.txt').read_text().splitlines()) == 3


# ---------------------------------------------------------------------------------------------- CLI: bad input


def _generated_folder(root, with_kept):
    """A generate-data folder whose samples have RGB and NIR but no mask."""
    os.makedirs(root / 'RGB')
    os.makedirs(root / 'NIR')
    lines = []
    for i in range(2):
        name = f'{i:06d}.png'
        PIL.Image.new('RGB', (32, 32)).save(root / 'RGB' / name)
        PIL.Image.new('L', (32, 32)).save(root / 'NIR' / name)
        lines.append(json.dumps({'index': i, 'seed': 0, 'uncertainty_score': 0.1 * i, 'rgb': f'RGB/{name}',
                                 'nir': f'NIR/{name}'}))
    (root / 'metadata-000000-000001.jsonl').write_text('\n'.join(lines) + '\n')
    if with_kept:
        (root / 'kept.jsonl').write_text(lines[0] + '\n')
    return root


@pytest.mark.parametrize('with_kept', [False, True])
def test_train_on_generated_folder_without_masks(tmp_path, capsys, with_kept):
    data = _generated_folder(tmp_path / 'gen', with_kept)
    out = tmp_path / 'out'
    code = train_segmentation.main(['--data', str(data), '--outdir', str(out), '--epochs', '1', '--device', 'cpu'])
    file = data / 'kept.jsonl' if with_kept else data / 'metadata-'
    assert_one_line_error(code, capsys.readouterr().err, str(file), 'mask')
    assert not out.exists()


def test_eval_with_a_class_the_model_lacks(work, demo, capsys):
    # A 3-class model (pupil merged into iris), then the 4-class truth: the first mask holding class 3 is named.
    merged = copy_set(demo['train'], work / 'merged', lambda m, i: np.minimum(m, 2), classes=None)
    out = work / 'run3'
    code = train_segmentation.main(['--data', merged, '--outdir', str(out), '--num_classes', '3', '--width', '4',
                                    '--depth', '2', '--epochs', '1', '--device', 'cpu'])
    assert code == 0
    assert torch.load(out / 'checkpoint-last.pt', weights_only=True)['model_config']['num_classes'] == 3
    capsys.readouterr()
    test = copy_set(demo['test'], work / 'test_no_names', classes=None)
    first = next(p for p in mask_files(test) if (read_mask(p) == 3).any())
    code = eval_segmentation.main(['--checkpoint', str(out / 'checkpoint-last.pt'), '--data', test, '--outdir',
                                   str(work / 'eval3'), '--device', 'cpu'])
    assert_one_line_error(code, capsys.readouterr().err, os.path.join('masks', os.path.basename(first)), 'class 3')
    assert not (work / 'eval3').exists()


def _eval(ckpt, data, outdir, *extra):
    return eval_segmentation.main(['--checkpoint', str(ckpt), '--data', str(data), '--outdir', str(outdir),
                                   '--device', 'cpu', *map(str, extra)])


def test_eval_with_bad_checkpoints(work, demo, demo_ckpt, capsys, tmp_path):
    ckpt = torch.load(demo_ckpt, weights_only=True)
    cases = {
        'foreign.pt': {'model': ckpt['model'], 'epoch': 1},  # someone else's dict: no format key
        'in_channels.pt': dict(ckpt, model_config=dict(ckpt['model_config'], in_channels=3)),
        'arch.pt': dict(ckpt, model_config=dict(ckpt['model_config'], arch='deeplabv3_resnet18')),
        'classes.pt': dict(ckpt, model_config=dict(ckpt['model_config'], num_classes=5)),
        'input.pt': dict(ckpt, input='rgb'),  # config and weights agree, the recorded input does not
        'names.pt': dict(ckpt, class_names=['a', 'b']),
    }
    for name, payload in cases.items():
        torch.save(payload, tmp_path / name)
    (tmp_path / 'garbage.pt').write_bytes(b'not a torch file')
    for name in list(cases) + ['garbage.pt', 'missing.pt']:
        code = _eval(tmp_path / name, demo['test'], tmp_path / 'eval')
        assert_one_line_error(code, capsys.readouterr().err, str(tmp_path / name))
    code = _eval(demo_ckpt, demo['test'], tmp_path / 'eval', '--input', 'nir')
    assert_one_line_error(code, capsys.readouterr().err, demo_ckpt, 'rgbnir', 'nir')
    assert not (tmp_path / 'eval').exists()


def test_eval_with_bad_class_maps(work, demo, demo_ckpt, capsys, tmp_path):
    partial = tmp_path / 'partial.json'
    partial.write_text(json.dumps({'0': 0, '1': 1, '2': 2}))  # the pupil (3) is not mapped
    first = next(p for p in mask_files(demo['test']) if (read_mask(p) == 3).any())
    code = _eval(demo_ckpt, demo['test'], tmp_path / 'eval', '--class_map', partial)
    assert_one_line_error(code, capsys.readouterr().err, os.path.join('masks', os.path.basename(first)),
                          'class 3', 'class map', str(partial))
    too_far = tmp_path / 'too_far.json'
    too_far.write_text(json.dumps({'0': 0, '1': 1, '2': 2, '3': 4}))  # the model has classes 0..3
    code = _eval(demo_ckpt, demo['test'], tmp_path / 'eval', '--class_map', too_far)
    assert_one_line_error(code, capsys.readouterr().err, str(too_far), '4')
    names = tmp_path / 'names.json'
    names.write_text(json.dumps({'map': {'0': 0, '1': 1, '2': 2, '3': 3}, 'classes': ['a', 'b', 'c', 'd']}))
    code = _eval(demo_ckpt, demo['test'], tmp_path / 'eval', '--class_map', names)
    assert_one_line_error(code, capsys.readouterr().err, str(names))
    for bad in ('[1, 2]', '{"x": 1}', '{"0": "bg"}', 'not json'):
        (tmp_path / 'bad.json').write_text(bad)
        code = _eval(demo_ckpt, demo['test'], tmp_path / 'eval', '--class_map', tmp_path / 'bad.json')
        assert_one_line_error(code, capsys.readouterr().err, str(tmp_path / 'bad.json'))
    code = _eval(demo_ckpt, demo['test'], tmp_path / 'eval', '--class_map', tmp_path / 'absent.json')
    assert_one_line_error(code, capsys.readouterr().err, str(tmp_path / 'absent.json'))
    assert not (tmp_path / 'eval').exists()


def test_eval_with_other_class_names_needs_a_class_map(work, demo, demo_ckpt, capsys, tmp_path):
    renamed = copy_set(demo['test'], tmp_path / 'renamed', classes=['skin', 'sclera', 'iris', 'pupil'])
    code = _eval(demo_ckpt, renamed, tmp_path / 'eval')
    assert_one_line_error(code, capsys.readouterr().err, os.path.join(renamed, 'classes.json'), '--class_map')
    # With an explicit (identity) map the same data is accepted.
    identity = tmp_path / 'identity.json'
    identity.write_text(json.dumps({str(i): i for i in range(4)}))
    assert _eval(demo_ckpt, renamed, tmp_path / 'eval', '--class_map', identity) == 0


# -------------------------------------------------------------------------------------------- CLI: evaluation


def _with_ignored(m, i):
    m = m.copy()
    if i % 2 == 0:
        m[:3] = 255  # a band of unlabelled pixels on every other mask
    return m


def test_eval_end_to_end(work, demo, demo_ckpt, capsys):
    data = copy_set(demo['test'], work / 'test_ignored', _with_ignored)
    out = work / 'eval_e2e'
    assert _eval(demo_ckpt, data, out) == 0
    assert 'mIoU' in capsys.readouterr().out
    report = json.loads((out / 'evaluation.json').read_text())
    truth = np.stack([read_mask(p) for p in mask_files(data)])
    assert (truth == 255).any()
    matrix = np.array(report['confusion_matrix'])
    assert matrix.shape == (4, 4)
    assert matrix.sum() == np.sum(truth != 255) == report['pixels']
    np.testing.assert_array_equal(matrix.sum(1), [np.sum(truth == c) for c in range(4)])
    np.testing.assert_array_equal(matrix, reference_confusion(demo_ckpt, data, 4))
    assert report['miou'] == pytest.approx(miou_from_matrix(matrix), abs=1e-12)
    assert report['pixel_accuracy'] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-12)
    assert report['classes'] == list(DEMO_CLASSES) and report['samples'] == 6 and report['input'] == 'rgbnir'
    md = (out / 'evaluation.md').read_text()
    assert 'mIoU' in md and 'truth \\ predicted' in md
    with PIL.Image.open(out / 'evaluation.png') as img:
        assert img.mode == 'RGB' and img.height > 6 * 32 and img.width >= 5 * 32  # 6 rows: RGB, NIR, truth, ...


def test_class_map_permuting_ids_equals_premapped_masks(work, demo, demo_ckpt, capsys):
    # The truth in another numbering: file id -> model id is model_of[file id].
    model_of = np.array([2, 0, 3, 1])
    file_of = np.argsort(model_of)  # model id -> file id
    lut = np.full(256, 255)
    lut[:4] = file_of

    def renumber(m, i):
        return lut[_with_ignored(m, i)]
    plain = copy_set(demo['test'], work / 'test_plain', _with_ignored)
    permuted = copy_set(demo['test'], work / 'test_permuted', renumber,
                        classes=[DEMO_CLASSES[model_of[i]] for i in range(4)])
    cmap = work / 'permutation.json'
    cmap.write_text(json.dumps({'map': {str(i): int(model_of[i]) for i in range(4)}, 'classes': list(DEMO_CLASSES)}))
    assert _eval(demo_ckpt, plain, work / 'eval_plain') == 0
    assert _eval(demo_ckpt, permuted, work / 'eval_mapped', '--class_map', cmap) == 0
    capsys.readouterr()
    a = json.loads((work / 'eval_plain' / 'evaluation.json').read_text())
    b = json.loads((work / 'eval_mapped' / 'evaluation.json').read_text())
    assert a['confusion_matrix'] == b['confusion_matrix']
    for key in ('miou', 'mean_f1', 'pixel_accuracy', 'pixels', 'per_class', 'classes'):
        assert a[key] == b[key], key
    assert b['class_map'] == {str(i): int(model_of[i]) for i in range(4)}
    # The permutation mattered: read without the map, the renumbered truth scores differently.
    k = np.array(reference_confusion(demo_ckpt, permuted, 4))
    assert not np.array_equal(k, np.array(a['confusion_matrix']))
    # And the mapped truth is what the model is scored against, pixel for pixel.
    np.testing.assert_array_equal(b['confusion_matrix'], reference_confusion(
        demo_ckpt, permuted, 4, truth_fn=lambda t: np.where(t == 255, 255, model_of[np.minimum(t, 3)])))


def test_repeat_makes_an_epoch_several_passes(tmp_path):
    data = write_rule_set(tmp_path / 'rule', 4, seed=3)
    opts = TrainOptions(data=data, outdir=str(tmp_path / 'run'), width=4, depth=2, epochs=2, repeat=3, batch=4,
                        device='cpu')
    Run(opts, **QUIET).run()
    ckpt = torch.load(tmp_path / 'run' / 'checkpoint-last.pt', weights_only=True)
    steps = {int(s['step']) for s in ckpt['optimizer']['state'].values()}
    assert steps == {2 * 3}  # 2 epochs x 3 passes x one batch of 4


def test_training_with_a_class_map_learns_in_the_models_numbering(work, demo, tmp_path, capsys):
    shipped = os.path.join(os.path.dirname(__file__), '..', 'EXPERIMENTS', 'segmentation',
                           'demo_renderer_to_ocular_4class.json')
    run = Run(tiny_options(demo['train'], tmp_path / 'mapped', epochs=1, class_map=shipped), **QUIET)
    run._setup()
    # Every training mask, read through the map, equals the renderer mask renumbered by hand (1 sclera -> 3, ...).
    renumber = np.array([0, 3, 1, 2])
    for i, sample in enumerate(run.full.samples):
        assert np.array_equal(run.full[i][1].numpy(), renumber[read_mask(sample.mask_file)])
    assert run.class_names == ['background', 'iris', 'pupil', 'sclera']  # the map's names, not the data's
    run.run()
    ckpt = torch.load(tmp_path / 'mapped' / 'checkpoint-last.pt', weights_only=True)
    assert ckpt['class_names'] == ['background', 'iris', 'pupil', 'sclera']
    # A training set with a class the map leaves out: one line naming the mask file.
    partial = tmp_path / 'partial.json'
    partial.write_text(json.dumps({'0': 0, '1': 1, '2': 2}))
    code = train_segmentation.main(['--data', demo['train'], '--outdir', str(tmp_path / 'bad'), '--class_map',
                                    str(partial), '--width', '4', '--depth', '2', '--epochs', '1', '--device', 'cpu'])
    first = next(p for p in mask_files(demo['train']) if (read_mask(p) == 3).any())
    assert_one_line_error(code, capsys.readouterr().err, os.path.basename(first), 'class 3', str(partial))
    assert not (tmp_path / 'bad' / 'checkpoint-last.pt').exists()
