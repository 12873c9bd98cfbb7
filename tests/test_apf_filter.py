"""The ArcFace Privacy Filter end to end with a small random backbone (MobileFaceNet, random weights).

With random weights, unrelated images have cosines of about 0.5-0.8 and a copy (or a lightly jittered copy) about
0.998, so the tests use a threshold of 0.95 in place of the authors' 0.622 (which is calibrated for trained r100
weights). The similarities the filter reports are checked against a float64 brute-force computation made here from
an independent preprocessing (PIL bicubic resize, manual scaling) and a direct forward pass.
"""

import csv
import json
import os

import numpy as np
import PIL.Image
import pytest
import torch

import apf_filter
from apf import calibrate as calibrate_module
from apf import filter as filter_module
from apf.backbones import get_model
from apf.checkpoint import save_backbone
from apf.embed import Embedder, preprocess
from conftest import assert_one_line_error

THRESHOLD = 0.95


def _blocks(seed, size=64):
    """A random image of coloured rectangles: unrelated images differ clearly in their embeddings."""
    r = np.random.RandomState(seed)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = r.randint(0, 256, 3)
    for _ in range(6):
        x0, y0 = r.randint(0, size - 16, 2)
        img[y0:y0 + r.randint(8, 24), x0:x0 + r.randint(8, 24)] = r.randint(0, 256, 3)
    return img


def _save(path, array, mode='RGB'):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(array, mode).save(path)


@pytest.fixture(scope='module')
def backbone():
    torch.manual_seed(0)
    return get_model('mbf').eval()


@pytest.fixture()
def setup(tmp_path, backbone):
    """Real set: 3 identities in sub-folders; generated set in the mask generator's layout: sample 0 is a copy of
    real id_b/0.png, sample 1 a jittered copy of id_a/1.png, samples 2..4 unrelated."""
    real = tmp_path / 'real'
    reals = {'id_a/0.png': _blocks(100), 'id_a/1.png': _blocks(101), 'id_b/0.png': _blocks(102),
             'id_c/0.png': _blocks(103)}
    for rel, img in reals.items():
        _save(str(real / rel), img)
    jitter = np.random.RandomState(7).randint(-6, 7, reals['id_a/1.png'].shape)
    gen_images = [reals['id_b/0.png'], np.clip(reals['id_a/1.png'].astype(int) + jitter, 0, 255).astype(np.uint8),
                  _blocks(200), _blocks(201), _blocks(202)]
    gen = tmp_path / 'generated'
    lines = []
    for i, img in enumerate(gen_images):
        name = f'{i:06d}.png'
        _save(str(gen / 'RGB' / name), img)
        _save(str(gen / 'NIR' / name), img.mean(2).astype(np.uint8), 'L')
        _save(str(gen / 'masks' / name), (img[..., 0] > 128).astype(np.uint8), 'L')
        _save(str(gen / 'masks_color' / name), img)
        lines.append(json.dumps(dict(index=i, seed=0, z=[0.0], uncertainty_score=0.1, rgb=f'RGB/{name}',
                                     nir=f'NIR/{name}', mask=f'masks/{name}', mask_color=f'masks_color/{name}')))
    (gen / 'metadata-000000-000004.jsonl').write_text('\n'.join(lines) + '\n')
    weights = tmp_path / 'backbone.pth'
    save_backbone(backbone, str(weights))
    return dict(real=real, gen=gen, weights=weights, reals=reals, gen_images=gen_images, out=tmp_path / 'out')


def _reference_embedding(model, img):
    """Independent preprocessing: PIL bicubic resize to 112, x / 127.5 - 1, CHW; a plain forward; L2 norm."""
    x = np.asarray(PIL.Image.fromarray(img).resize((112, 112), PIL.Image.BICUBIC), np.float64) / 127.5 - 1
    with torch.no_grad():
        e = model(torch.from_numpy(x.transpose(2, 0, 1)[None]).float())[0].double().numpy()
    return e / np.linalg.norm(e)


def _run(args):
    return apf_filter.main([str(a) for a in args])


def _filter_args(s, *extra):
    return ['--generated', s['gen'], '--real', s['real'], '--weights', s['weights'], '--arch', 'mbf', '--outdir',
            s['out'], '--threshold', THRESHOLD, '--device', 'cpu', '--no-progress', *extra]


def _report(out):
    with open(out / 'apf_report.csv') as f:
        return {row['sample']: row for row in csv.DictReader(f)}


def test_preprocess_matches_authors_rule():
    img = _blocks(5, size=96)
    x = preprocess(img)
    ref = np.asarray(PIL.Image.fromarray(img).resize((112, 112), PIL.Image.BICUBIC), np.float64) / 127.5 - 1
    np.testing.assert_allclose(x, ref.transpose(2, 0, 1), atol=1e-6)
    assert x.min() >= -1 and x.max() <= 1
    wide = np.zeros((50, 100, 3), np.uint8)
    wide[:, 25:75] = 255  # the central square is white, the rest black
    assert np.all(preprocess(wide, center_crop=1.0)[:, :, :20] == -1)  # whole image squeezed: black borders stay
    np.testing.assert_allclose(preprocess(wide, center_crop=1.0 - 1e-9), 1.0, atol=1e-6)
    np.testing.assert_allclose(preprocess(wide, center_crop=0.5), 1.0, atol=1e-6)


def test_copies_rejected_unrelated_kept(setup, backbone, capsys):
    s = setup
    assert _run(_filter_args(s)) == 0
    out = s['out']
    report = _report(out)
    assert [report[f'{i:06d}'][k] for i in range(5) for k in ['decision']] == \
        ['rejected_identity', 'rejected_identity', 'accepted', 'accepted', 'accepted']
    assert report['000000']['nearest_identity'] == 'id_b' and report['000000']['nearest_real_image'] == 'id_b/0.png'
    assert report['000001']['nearest_identity'] == 'id_a' and report['000001']['nearest_real_image'] == 'id_a/1.png'
    # the reported similarities equal a float64 brute force over every real image
    real_emb = {rel: _reference_embedding(backbone, img) for rel, img in s['reals'].items()}
    for i, img in enumerate(s['gen_images']):
        e = _reference_embedding(backbone, img)
        best = max(real_emb, key=lambda rel: e @ real_emb[rel])
        assert float(report[f'{i:06d}']['highest_similarity']) == pytest.approx(e @ real_emb[best], abs=2e-5)
        assert report[f'{i:06d}']['nearest_real_image'] == best
    # rejected samples: neither their RGB, NIR nor mask reach the output
    for sub in ('RGB', 'NIR', 'masks', 'masks_color'):
        assert sorted(os.listdir(out / sub)) == ['000002.png', '000003.png', '000004.png']
        for i in (2, 3, 4):
            assert (out / sub / f'{i:06d}.png').read_bytes() == (s['gen'] / sub / f'{i:06d}.png').read_bytes()
    meta = [json.loads(line) for line in (out / 'metadata.jsonl').read_text().splitlines()]
    assert [m['index'] for m in meta] == [2, 3, 4] and all(m['nir'] == f'NIR/{m["index"]:06d}.png' for m in meta)
    summary = json.loads((out / 'apf_summary.json').read_text())
    c = summary['counts']
    assert c == dict(total=5, accepted=3, rejected_identity=2, rejected_duplicate=0)
    assert c['accepted'] + c['rejected_identity'] + c['rejected_duplicate'] == len(report) == c['total']
    assert summary['real_images'] == 4 and summary['real_identities'] == 3
    with PIL.Image.open(out / 'apf_similarity_hist.png') as im:
        assert im.size[0] > 100 and im.mode == 'RGB'
    assert '3 of 5 samples accepted' in capsys.readouterr().out


def test_threshold_boundary_and_identity_mean(setup, backbone):
    s = setup
    embedder = Embedder(backbone)
    samples, _ = filter_module.scan_generated(s['gen'])
    gen = embedder.embed_files([str(s['gen'] / x.files['rgb']) for x in samples], progress=False)
    real = embedder.embed_files([str(s['real'] / rel) for rel in sorted(s['reals'])], progress=False)
    score = (gen.astype(np.float64) @ real.T.astype(np.float64)).max(1)
    t = float(score[2])  # an unrelated sample's own highest similarity
    kw = dict(embedder=embedder, cache_key={}, cache='', progress=False, log=lambda *a: None)
    at = filter_module.run_filter(s['gen'], s['real'], None, outdir=s['out'] / 'at', threshold=t, **kw)
    below = filter_module.run_filter(s['gen'], s['real'], None, outdir=s['out'] / 'below',
                                     threshold=float(np.nextafter(t, -np.inf)), **kw)
    assert _report(s['out'] / 'at')['000002']['decision'] == 'accepted'  # equal to the threshold: kept
    assert _report(s['out'] / 'below')['000002']['decision'] == 'rejected_identity'
    assert at['counts']['accepted'] == int(np.sum(score <= t))
    assert below['counts']['accepted'] == int(np.sum(score < t))
    # 'mean' scores against each identity's normalised mean embedding
    ids = np.array([rel.split('/')[0] for rel in sorted(s['reals'])])
    tmpl = {k: real[ids == k].mean(0) / np.linalg.norm(real[ids == k].mean(0)) for k in set(ids)}
    mean_score, ident, _, names = filter_module.identity_similarities(gen, real, list(ids), mode='mean')
    for i in range(len(gen)):
        best = max(tmpl, key=lambda k: gen[i] @ tmpl[k])
        assert names[ident[i]] == best and mean_score[i] == pytest.approx(gen[i] @ tmpl[best], abs=1e-5)


def test_duplicates_among_accepted(setup):
    s = setup
    # sample 3 becomes a copy of sample 2 (both unrelated to every real image)
    for sub in ('RGB', 'NIR', 'masks', 'masks_color'):
        (s['gen'] / sub / '000003.png').write_bytes((s['gen'] / sub / '000002.png').read_bytes())
    assert _run(_filter_args(s, '--duplicate-threshold', THRESHOLD)) == 0
    report = _report(s['out'])
    assert report['000002']['decision'] == 'accepted'
    assert report['000003']['decision'] == 'rejected_duplicate' and report['000003']['duplicate_of'] == '000002'
    assert float(report['000003']['duplicate_similarity']) > 0.999
    assert sorted(os.listdir(s['out'] / 'NIR')) == ['000002.png', '000004.png']
    assert json.loads((s['out'] / 'apf_summary.json').read_text())['counts']['rejected_duplicate'] == 1


def test_second_run_reuses_cache(setup, monkeypatch):
    s = setup
    embedded = []
    original = Embedder.embed_files

    def counting(self, paths, *args, **kwargs):
        embedded.append([os.path.relpath(p, s['real']) for p in paths if str(p).startswith(str(s['real']))])
        return original(self, paths, *args, **kwargs)

    monkeypatch.setattr(Embedder, 'embed_files', counting)
    assert _run(_filter_args(s)) == 0
    first = _report(s['out'])
    assert sorted(sum(embedded, [])) == sorted(s['reals'])
    embedded.clear()
    assert _run(_filter_args(s)) == 0  # same outdir: the cache is there
    assert sum(embedded, []) == []
    assert _report(s['out']) == first
    # a changed real file is embedded again, the others come from the cache
    _save(str(s['real'] / 'id_c/0.png'), _blocks(999))
    os.utime(s['real'] / 'id_c/0.png', ns=(1, 1))
    embedded.clear()
    assert _run(_filter_args(s)) == 0
    assert sum(embedded, []) == ['id_c/0.png']


def test_manifest_only_and_kept_list(setup):
    s = setup
    kept = [json.loads(line) for line in (s['gen'] / 'metadata-000000-000004.jsonl').read_text().splitlines()]
    (s['gen'] / 'kept.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in kept[1:4]))
    assert _run(_filter_args(s, '--manifest-only')) == 0
    report = _report(s['out'])
    assert sorted(report) == ['000001', '000002', '000003']  # only the samples that passed the uncertainty filter
    assert not (s['out'] / 'RGB').exists() and not (s['out'] / 'metadata.jsonl').exists()
    manifest = [json.loads(line) for line in (s['out'] / 'accepted.jsonl').read_text().splitlines()]
    assert [m['index'] for m in manifest] == [2, 3]
    assert all(os.path.isfile(m['nir']) and m['nir'].startswith(str(s['gen'])) for m in manifest)
    assert _run(_filter_args(s, '--manifest-only', '--all-samples')) == 0
    assert sorted(_report(s['out'])) == [f'{i:06d}' for i in range(5)]


def _expect_error(capsys, args, *fragments):
    assert_one_line_error(_run(args), capsys.readouterr().err, *fragments)


def test_bad_input(setup, capsys, tmp_path):
    s = setup
    args = _filter_args(s)
    i = args.index('--weights') + 1
    _expect_error(capsys, args[:i] + [tmp_path / 'none.pth'] + args[i + 1:], 'none.pth', 'not found')
    os.remove(s['gen'] / 'NIR' / '000003.png')
    _expect_error(capsys, args, 'NIR/000003.png', 'missing nir')
    (s['gen'] / 'NIR' / '000003.png').write_bytes((s['gen'] / 'NIR' / '000002.png').read_bytes())
    os.remove(s['gen'] / 'masks' / '000001.png')
    _expect_error(capsys, args, 'masks/000001.png', 'missing mask')
    (s['gen'] / 'masks' / '000001.png').write_bytes((s['gen'] / 'masks' / '000002.png').read_bytes())
    empty = tmp_path / 'empty'
    empty.mkdir()
    j = args.index('--generated') + 1
    _expect_error(capsys, args[:j] + [empty] + args[j + 1:], 'empty', 'not a generated dataset')
    k = args.index('--real') + 1
    _expect_error(capsys, args[:k] + [empty] + args[k + 1:], 'empty', 'no images')
    assert not s['out'].exists()  # nothing written by any failed run
    flat = tmp_path / 'flat'
    _save(str(flat / 'x.png'), _blocks(1))
    _expect_error(capsys, args[:k] + [flat] + args[k + 1:], 'x.png', 'identity')
    _expect_error(capsys, args[:k] + [flat] + args[k + 1:] + ['--identity-pattern', r'^(\d+)_'], 'x.png',
                  'does not match')
    shard = s['gen'] / 'metadata-000000-000004.jsonl'
    good = shard.read_text()
    shard.write_text(good.replace('"index": 3, ', ''))  # a line without its sample index
    _expect_error(capsys, args, 'metadata-*.jsonl', 'index')
    shard.write_text(good)
    (s['real'] / 'id_c' / '0.png').write_bytes(b'not a png')
    _expect_error(capsys, args, '0.png', 'cannot read')
    assert not s['out'].exists()
    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'thesis.tex').write_text('x')
    o = args.index('--outdir') + 1
    _expect_error(capsys, args[:o] + [foreign] + args[o + 1:], 'foreign', 'did not write')


def test_threshold_at_fmr_hand_computed():
    imp = np.arange(1, 11) / 10.0  # 0.1 .. 1.0
    assert calibrate_module.threshold_at_fmr(imp, 0.1) == pytest.approx(0.9)  # one of ten impostors above
    assert calibrate_module.threshold_at_fmr(imp, 0.0) == pytest.approx(1.0)  # none above
    assert calibrate_module.threshold_at_fmr(imp, 0.25) == pytest.approx(0.8)  # two (not three) above
    for fmr in (0.0, 0.05, 0.1, 0.33, 0.5):
        t = calibrate_module.threshold_at_fmr(imp, fmr)
        assert np.mean(imp > t) <= fmr + 1e-12 and np.mean(imp > np.nextafter(t, -1)) > fmr - 1e-12


def test_calibrate_cli(setup, backbone, capsys):
    s = setup
    for k in range(3):  # a third image of id_b, so that two identities have genuine pairs
        _save(str(s['real'] / 'id_b' / f'extra{k}.png'), _blocks(300 + k))
    out = s['out'] / 'calib'
    assert _run(['calibrate', '--real', s['real'], '--weights', s['weights'], '--arch', 'mbf', '--outdir', out,
                 '--fmr', 0.1, '--no-progress']) == 0
    stats = json.loads((out / 'calibration.json').read_text())
    files = sorted(p.relative_to(s['real']).as_posix() for p in s['real'].rglob('*.png'))
    ids = [f.split('/')[0] for f in files]
    emb = np.stack([_reference_embedding(backbone, np.asarray(PIL.Image.open(s['real'] / f).convert('RGB')))
                    for f in files])
    sims = emb @ emb.T
    pairs = [(a, b) for a in range(len(files)) for b in range(a + 1, len(files))]
    genuine = np.array([sims[a, b] for a, b in pairs if ids[a] == ids[b]])
    impostor = np.array([sims[a, b] for a, b in pairs if ids[a] != ids[b]])
    assert stats['genuine_pairs'] == len(genuine) == 1 + 6 and stats['impostor_pairs'] == len(impostor)
    assert stats['genuine']['mean'] == pytest.approx(genuine.mean(), abs=1e-5)
    assert stats['authors_rule_threshold'] == pytest.approx(genuine.mean() - 2 * genuine.std(), abs=1e-5)
    assert np.mean(impostor > stats['threshold_at_fmr'] + 1e-6) <= 0.1
    assert stats['threshold_at_fmr'] == pytest.approx(np.sort(impostor)[::-1][int(0.1 * len(impostor))], abs=1e-5)
    assert (out / 'calibration_hist.png').is_file()
    assert 'threshold at FMR 0.1' in capsys.readouterr().out


def _outputs(out):
    """Every output file's bytes (the summary without its run time; the cache's arrays, its zip headers holding
    the time of writing)."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob('*')) if p.is_file()}
    summary = json.loads(files.pop('apf_summary.json'))
    summary.pop('seconds')
    for name in [n for n in files if n.endswith('.npz')]:
        with np.load(out / name) as npz:
            files[name] = {key: npz[key].tobytes() for key in npz.files}
    return files, summary


def test_two_processes_write_what_one_writes(setup, tmp_path, monkeypatch, one_torch_thread):
    # One thread in every process: on the CPU a convolution's rounding depends on how many threads share it.
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    s = setup
    assert _run(_filter_args(s, '--batch', 2, '--duplicate-threshold', 0.9)) == 0
    one = _outputs(s['out'])
    two_dir = tmp_path / 'two'
    assert _run(_filter_args(dict(s, out=two_dir), '--batch', 2, '--duplicate-threshold', 0.9, '--gpus', 2)) == 0
    two = _outputs(two_dir)
    assert sorted(two[0]) == sorted(one[0]) and 'cache/real_embeddings-mbf.npz' in one[0]
    for name, data in one[0].items():
        assert two[0][name] == data, f'{name} differs'
    assert two[1]['embedding'] == one[1]['embedding'] and two[1]['counts'] == one[1]['counts']
    assert {k: v for k, v in two[1].items() if k not in ('cache',)} == {k: v for k, v in one[1].items()
                                                                         if k not in ('cache',)}
