"""The one-command demo, its stand-in annotator and the main notebook.

The stand-in annotator (trained by the demo on the renderer's masks of its training pairs) is checked against the
renderer's masks of other eyes (an independent reference). The demo and the notebook run
every step of the pipeline with the demo settings except a shorter GAN training (1 kimg instead of 10) and fewer
pairs, to keep the suite within minutes; demo.py's defaults are what the README promises.
"""

import json
import os

import numpy as np
import PIL.Image
import pytest

import demo as demo_script
from conftest import REPO, assert_one_line_error
from pipeline import auto_annotate
from training.demo_eyes import DEMO_CLASSES, render_demo_pair

# The renderer's ids (background, sclera, iris, pupil) as ocular_4class ids (background 0, iris 1, pupil 2, sclera 3).
RENDER_TO_OCULAR = np.array([0, 3, 1, 2], np.uint8)
# The stand-in annotator of the test's short demo (48 training pairs) on real eyes it never saw; measured about 0.85.
ANNOTATOR_IOU_BAR = 0.7


def test_annotator_colours_are_the_ocular_palette():
    palette = json.loads((REPO / 'interpreter' / 'palettes' / 'ocular_4class.json').read_text())
    by_id = {c['id']: c['colors'][0] for c in palette['classes']}
    for cls, rgb in auto_annotate.PALETTE.items():
        assert by_id[cls] == '#{:02x}{:02x}{:02x}'.format(*rgb)
    assert by_id[auto_annotate.PUPIL] == '#ff0000' and by_id[auto_annotate.SCLERA] == '#00ff00'


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo') / 'run'
    code = demo_script.main(['--outdir', str(out), '--kimg', '1', '--count', '48', '--num_sample', '20',
                             '--seg_epochs', '4'])
    return dict(out=out, code=code)


def _annotator(out):
    return auto_annotate.Annotator(str(out / 'annotator' / 'checkpoint-last.pt'))


def test_stand_in_annotator_segments_real_demo_eyes(demo_run):
    """Against the renderer's own masks of eyes from another seed (an independent reference)."""
    assert DEMO_CLASSES == ('background', 'sclera', 'iris', 'pupil')
    annotator = _annotator(demo_run['out'])
    inter, union = np.zeros(4), np.zeros(4)
    for index in range(60):
        rgb, nir, mask = render_demo_pair(32, seed=5, index=index)
        truth = RENDER_TO_OCULAR[mask]
        pred = annotator(rgb, nir)
        assert pred.shape == truth.shape and pred.dtype == np.uint8 and pred.max() <= 3
        for c in range(4):
            inter[c] += np.logical_and(pred == c, truth == c).sum()
            union[c] += np.logical_or(pred == c, truth == c).sum()
    iou = inter / union
    assert iou.mean() > ANNOTATOR_IOU_BAR, iou
    assert iou.min() > 0.4, iou  # every class, not only the background


def test_demo_runs_every_step(demo_run):
    out = demo_run['out']
    assert demo_run['code'] == 0
    summary = json.loads((out / 'summary.json').read_text())
    assert [s['step'] for s in summary['steps']] == ['dataset', 'train_gan', 'sample', 'annotate', 'import',
                                                     'train_interpreter', 'generate', 'evaluate_masks',
                                                     'downstream', 'overview']
    assert summary['generated_samples'] == 20
    kept = [json.loads(line) for line in (out / 'interpreter' / 'samples' / 'kept.jsonl').read_text().splitlines()]
    assert summary['kept_after_uncertainty_filter'] == len(kept) == 18  # the 10 % most uncertain dropped
    for entry in kept:
        for key in ('rgb', 'nir', 'mask', 'mask_color'):
            assert (out / 'interpreter' / 'samples' / entry[key]).is_file()
        mask = np.asarray(PIL.Image.open(out / 'interpreter' / 'samples' / entry['mask']))
        assert mask.shape == (32, 32) and mask.max() <= 3
    assert len(list((out / 'interpreter' / 'models').glob('model_*.pth'))) == 10
    for k in range(8):  # the annotations went through the real import step
        m = np.load(out / 'interpreter' / 'eyes_processed' / f'image_mask{k}.npy')
        assert m.dtype == np.uint8 and m.shape == (32, 32)
    with PIL.Image.open(out / 'overview.png') as im:
        assert im.size[0] > 400 and im.size[1] > 300
    assert (out / 'checkpoints' / 'demo.pkl').is_file()
    md = (out / 'summary.md').read_text()
    assert 'train_db_stylegan2.py' in md and 'prepare_annotations.py' in md
    assert 'train_segmentation.py' in md and 'eval_segmentation.py' in md and 'How good are the masks?' in md


def _iou_table(pairs, k=4):
    inter, union = np.zeros(k), np.zeros(k)
    for truth, pred in pairs:
        for c in range(k):
            inter[c] += np.logical_and(truth == c, pred == c).sum()
            union[c] += np.logical_or(truth == c, pred == c).sum()
    return [inter[c] / union[c] if union[c] else None for c in range(k)]


def test_demo_evaluation_numbers(demo_run):
    out = demo_run['out']
    samples = out / 'interpreter' / 'samples'
    evaluation = json.loads((out / 'summary.json').read_text())['evaluation']
    assert len(evaluation) == 4
    annotator = _annotator(out)
    # The mask generator's score, recomputed from the files: every kept sample labelled by the annotator.
    kept = [json.loads(line) for line in (samples / 'kept.jsonl').read_text().splitlines()]
    pairs = []
    for entry in kept:
        rgb = np.asarray(PIL.Image.open(samples / entry['rgb']).convert('RGB'))
        nir = np.asarray(PIL.Image.open(samples / entry['nir']).convert('L'))
        pairs.append((annotator(rgb, nir), np.asarray(PIL.Image.open(samples / entry['mask']))))
    expected = _iou_table(pairs)
    masks_row = next(v for k, v in evaluation.items() if k.startswith('generated masks'))
    names = ['background', 'iris', 'pupil', 'sclera']
    for c, name in enumerate(names):
        if expected[c] is None:
            assert masks_row['iou'][name] is None
        else:
            assert masks_row['iou'][name] == pytest.approx(expected[c])
    assert masks_row['miou'] == pytest.approx(np.mean([v for v in expected if v is not None]))
    # The downstream reports: both segmenters scored on the same real eyes (renderer masks, class map applied).
    for folder in (out / 'annotator', out / 'segmentation' / 'synthetic', out / 'segmentation' / 'annotated'):
        report = json.loads((folder / 'eval_real.json').read_text())
        assert report['samples'] == 100 and report['class_map'] == {'0': 0, '1': 3, '2': 1, '3': 2}
        assert np.asarray(report['confusion_matrix']).sum() == 100 * 32 * 32
        assert (folder / 'eval_real.png').is_file() and (folder / 'curves.png').is_file()


def test_demo_rerun_skips_finished_steps(demo_run, capsys):
    out = demo_run['out']
    before = (out / 'summary.json').read_text()
    assert demo_script.main(['--outdir', str(out), '--kimg', '1', '--count', '48', '--num_sample', '20',
                             '--seg_epochs', '4']) == 0
    text = capsys.readouterr().out
    assert text.count('done earlier') == 10
    assert json.loads((out / 'summary.json').read_text())['steps'] == json.loads(before)['steps']
    # other settings in the same folder: refused with one line, exit code 2
    code = demo_script.main(['--outdir', str(out), '--kimg', '2', '--count', '48', '--num_sample', '20',
                             '--seg_epochs', '4'])
    assert_one_line_error(code, capsys.readouterr().err, 'other settings')


def test_notebook_executes(tmp_path):
    nbformat = pytest.importorskip('nbformat')
    nbclient = pytest.importorskip('nbclient')
    pytest.importorskip('ipykernel')
    nb = nbformat.read(str(REPO / 'main_BiFaceGAN.ipynb'), as_version=4)
    env = dict(BIGAN_REPO=str(REPO), BIGAN_DEMO_OUT=str(tmp_path / 'nb'), BIGAN_DEMO_KIMG='1',
               BIGAN_DEMO_COUNT='48', BIGAN_DEMO_NUM_SAMPLE='12')
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment
    try:
        client = nbclient.NotebookClient(nb, timeout=900, kernel_name='python3', resources=dict(
            metadata=dict(path=str(REPO))))
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for cell in nb.cells if cell.cell_type == 'code' for o in cell.get('outputs', [])]
    assert not [o for o in outputs if o.get('output_type') == 'error']
    images = [o for o in outputs if 'image/png' in o.get('data', {})]
    assert len(images) >= 7  # an image for every step
    assert (tmp_path / 'nb' / 'overview.png').is_file()
    assert json.loads((tmp_path / 'nb' / 'apf' / 'apf_summary.json').read_text())['counts']['total'] > 0


def test_progress_shows_each_complete_record_once(tmp_path):
    # The demo's live view of a running step: records appended since the last poll, never a half-written line.
    from pipeline.demo import _NewRecords
    (tmp_path / 'run1').mkdir()
    stats = tmp_path / 'run1' / 'stats.jsonl'
    stats.write_text('{"t": 0}\n')  # there before the step started: not shown
    progress = _NewRecords(str(tmp_path / '*' / 'stats.jsonl'), lambda r: f't={r["t"]}')
    assert progress() == []
    with open(stats, 'a') as f:
        f.write('{"t": 1}\n{"t": 2}\n{"t"')
    assert progress() == ['t=1', 't=2']
    with open(stats, 'a') as f:
        f.write(': 3}\n')
    (tmp_path / 'run2').mkdir()
    (tmp_path / 'run2' / 'stats.jsonl').write_text('{"t": 4}\n')  # a file that appears later is read from its start
    assert progress() == ['t=3', 't=4']
    assert progress() == []
