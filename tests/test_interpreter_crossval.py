"""Mask generator self-evaluation: cross-validation over the annotated samples (checked against an ensemble trained
independently on a fold's samples alone) and scoring generated masks against reference masks."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
from test_interpreter_pipeline import RES, _mean_iou, experiment  # noqa: F401 (the shared module fixture)

from conftest import REPO, assert_proc_error
from interpreter import classifier, crossval, ensemble, train
from interpreter import config as config_module
from interpreter import latents as latents_module


def _iou_per_class(pred, truth, k):
    out = []
    for c in range(k):
        union = np.logical_or(pred == c, truth == c).sum()
        out.append(None if union == 0 else np.logical_and(pred == c, truth == c).sum() / union)
    return out


def test_folds():
    assert crossval.make_folds(4) == [[0], [1], [2], [3]]
    parts = crossval.make_folds(8, folds=3, seed=1)
    assert sorted(i for p in parts for i in p) == list(range(8)) and sorted(len(p) for p in parts) == [2, 3, 3]
    with pytest.raises(ValueError):
        crossval.make_folds(1)


def test_cross_validation_matches_an_ensemble_trained_without_the_held_out_samples(experiment, tmp_path):  # noqa: F811
    ann = experiment['exp'] / 'annotations'
    cfg = config_module.load_config(str(experiment['cfg_path']), overrides=dict(
        exp_dir=str(tmp_path / 'cv'), annotation_mask_path=str(ann),
        annotation_image_latent_path=str(ann / 'latent_stylegan.npy')))
    os.makedirs(cfg.exp_dir)
    report = crossval.cross_validate(cfg, folds=4, device='cpu', progress=False, log=lambda *_: None)
    assert not os.path.exists(os.path.join(cfg.exp_dir, 'models', 'model_0.pth'))  # models/ untouched
    assert (tmp_path / 'cv' / 'cross_validation.md').is_file()
    saved = json.loads((tmp_path / 'cv' / 'cross_validation.json').read_text())
    assert saved['folds'] == report['folds'] and len(saved['samples']) == 8

    # Independent reference for fold 0: an annotation folder holding only the other samples, trained as usual.
    held = report['folds'][0]
    keep = [i for i in range(8) if i not in held]
    ref = tmp_path / 'ref'
    (ref / 'annotations').mkdir(parents=True)
    np.save(ref / 'annotations' / 'latent_stylegan.npy', np.load(ann / 'latent_stylegan.npy')[keep])
    for j, i in enumerate(keep):
        shutil.copy(ann / f'image_mask{i}.npy', ref / 'annotations' / f'image_mask{j}.npy')
    ref_cfg = config_module.load_config(str(experiment['cfg_path']), overrides=dict(
        exp_dir=str(ref), annotation_mask_path=str(ref / 'annotations'), max_training=len(keep),
        annotation_image_latent_path=str(ref / 'annotations' / 'latent_stylegan.npy')))
    train.train_ensemble(ref_cfg, device='cpu', progress=False, log=lambda *_: None)
    models = classifier.load_ensemble(str(ref), ref_cfg.model_num)
    predictor = ensemble.EnsemblePredictor(models, out_res=RES, mode='bilinear', fast=False)
    G = experiment['G']
    z = np.load(ann / 'latent_stylegan.npy')
    by_name = {r['sample']: r for r in report['samples']}
    for i in held:
        ws = latents_module.z_to_ws(G, z[i:i + 1], psi=cfg.truncation_psi, cutoff=cfg.truncation_cutoff)
        feats = [f[0] for f in latents_module.synthesize(G, ws, noise_mode='const', return_features=True)[2]]
        pred = np.asarray(predictor(feats).labels)
        truth = np.load(ann / f'image_mask{i}.npy')
        row = by_name[f'image_mask{i}']
        assert row['fold'] == 0
        expected = _iou_per_class(pred, truth, 3)
        for c in range(3):
            got = row['iou'][str(c)]
            assert (got is None) == (expected[c] is None)
            if got is not None:
                assert got == pytest.approx(expected[c], abs=2e-3)  # fast vs dense path: a few pixels may differ
        assert row['miou'] == pytest.approx(_mean_iou(pred, truth, 3), abs=2e-3)
    assert np.asarray(report['confusion_matrix']).sum() == 8 * RES * RES
    assert report['miou'] > 0.3  # above chance for three classes (see test_interpreter_pipeline's bars)


def _reference_folder(src_masks, dst, names, corrupt=None):
    dst.mkdir()
    for name in names:
        mask = np.asarray(PIL.Image.open(src_masks / f'{name}.png')).astype(np.int64)
        if name == corrupt:
            mask = mask.copy()
            mask[: RES // 2] = 0
        np.save(dst / f'{name}.npy', mask)


def test_eval_masks_scores_generated_masks(experiment, tmp_path):  # noqa: F811
    if not (experiment['exp'] / 'models' / 'model_1.pth').is_file():
        train.train_ensemble(experiment['cfg'], device='cpu', progress=False, log=lambda *_: None)
    out = tmp_path / 'samples'
    cmd = [sys.executable, 'train_interpreter.py', '--exp', str(experiment['cfg_path']), '--device', 'cpu']
    proc = subprocess.run(cmd + ['--generate_data', 'True', '--num_sample', '3', '--out', str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = tmp_path / 'reference'
    _reference_folder(out / 'masks', ref, ['000000', '000002'], corrupt='000002')
    proc = subprocess.run(cmd + ['--eval_masks', str(ref), '--out', str(out), '--class_names', 'a,b,c'], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / 'mask_evaluation.json').read_text())
    rows = {r['sample']: r for r in report['samples']}
    assert rows['000000']['miou'] == pytest.approx(1.0)  # identical masks
    pred = np.asarray(PIL.Image.open(out / 'masks' / '000002.png')).astype(np.int64)
    truth = np.load(ref / '000002.npy')
    assert rows['000002']['miou'] == pytest.approx(_mean_iou(pred, truth, 3))
    assert set(rows['000002']['iou']) == {'a', 'b', 'c'}

    np.save(ref / '000009.npy', truth)  # no generated sample of that name
    proc = subprocess.run(cmd + ['--eval_masks', str(ref), '--out', str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert_proc_error(proc, '000009.npy', 'no generated mask')
