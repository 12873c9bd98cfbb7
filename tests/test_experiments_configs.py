"""The shipped experiment configs (EXPERIMENTS/interpreter/*/{generate,train_datagan}.json): they load, carry the
papers' settings, resolve exp_dir to their own folder, agree between the two steps, and name exactly the files that
make_training_data.py and prepare_annotations.py write."""

import json
import shutil

import numpy as np
import PIL.Image
import pytest

from conftest import REPO
from interpreter import latents
from interpreter.annotation_import import import_annotations
from interpreter.config import ConfigError, load_config
from interpreter.palette import load_palette

EXPERIMENTS = REPO / 'EXPERIMENTS'

# name -> expected values; the palette is what prepare_annotations.py is given for that experiment.
EXPECTED = {
    'CrossEyed_NIR_RGB': dict(category='eyes_256', number_class=4, truncation_psi=0.7, truncation_cutoff=7, seed=0,
                              processed='eyes_processed', palette='ocular_4class'),
    'Training_tufts_256': dict(category=None, number_class=8, truncation_psi=0.5, truncation_cutoff=8, seed=1111,
                               processed='images_processed',
                               palette=str(EXPERIMENTS / 'interpreter' / 'Training_tufts_256' /
                                           'palette_face_8class.json')),
}
CONFIGS = [(name, step) for name in EXPECTED for step in ('generate.json', 'train_datagan.json')]
CONFIG_IDS = [f'{name}/{step}' for name, step in CONFIGS]
# Keys that decide which image a latent becomes: they must agree between make_training_data and the interpreter.
REGENERATION_KEYS = ('exp_dir', 'stylegan_checkpoint', 'dim', 'resolution', 'category', 'generator_key',
                     'truncation_psi', 'truncation_cutoff', 'noise_mode', 'force_fp32', 'annotation_data_from_w',
                     'number_class', 'max_training', 'upsample_mode')


def exp_folder(name):
    return EXPERIMENTS / 'interpreter' / name


@pytest.mark.parametrize('name,step', CONFIGS, ids=CONFIG_IDS)
def test_config_loads_with_the_papers_settings(name, step, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs find the repository root from their own location, not the cwd
    cfg = load_config(exp_folder(name) / step, check_files=False)
    want = EXPECTED[name]
    assert cfg.exp_dir == str(exp_folder(name))
    assert cfg.stylegan_checkpoint == str(EXPERIMENTS / 'checkpoints' / f'{name}.pkl')
    assert cfg.dim == (256, 256, 4992) and cfg.resolution == 256 and cfg.category == want['category']
    assert (cfg.number_class, cfg.max_training, cfg.batch_size) == (want['number_class'], 8, 64)
    assert (cfg.truncation_psi, cfg.truncation_cutoff) == (want['truncation_psi'], want['truncation_cutoff'])
    assert (cfg.generator_key, cfg.noise_mode, cfg.force_fp32, cfg.seed) == ('G_ema', 'const', True, want['seed'])
    if step == 'generate.json':
        assert cfg.model_num == 1 and cfg.expand_to_dimensions == 14
        # make_training_data needs no input file but the generator (it writes the average latent itself).
        assert (cfg.annotation_mask_path, cfg.annotation_image_latent_path, cfg.average_latent) == (None, None, None)
    else:
        assert cfg.model_num == 10 and cfg.uncertainty_portion == 0.1
        processed = exp_folder(name) / want['processed']
        assert cfg.annotation_mask_path == str(processed)
        assert cfg.annotation_image_latent_path == str(processed / 'latent_stylegan.npy')
        assert cfg.average_latent == str(exp_folder(name) / latents.AVG_FILE)


@pytest.mark.parametrize('name', EXPECTED)
def test_both_steps_regenerate_the_same_images(name):
    gen = load_config(exp_folder(name) / 'generate.json', check_files=False).to_dict()
    train = load_config(exp_folder(name) / 'train_datagan.json', check_files=False).to_dict()
    for key in REGENERATION_KEYS:
        assert gen[key] == train[key], f'{name}: {key} differs between generate.json and train_datagan.json'


@pytest.mark.parametrize('name', EXPECTED)
def test_palette_matches_number_class(name):
    palette = load_palette(EXPECTED[name]['palette'])
    assert sorted(c.id for c in palette.classes) == list(range(EXPECTED[name]['number_class']))


@pytest.mark.parametrize('name,step', CONFIGS, ids=CONFIG_IDS)
def test_unknown_key_still_rejected(name, step, tmp_path):
    raw = json.loads((exp_folder(name) / step).read_text())
    raw['truncation_psy'] = 0.7
    folder = tmp_path / 'EXPERIMENTS' / 'interpreter' / name
    folder.mkdir(parents=True)
    (folder / step).write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="unknown key 'truncation_psy'"):
        load_config(folder / step, check_files=False)


def _fake_annotations(gimp, palette, ids, size=256):
    """image_{id}.jpg, image_{id}_NIR.jpg and image_{id}_mask.png (one band per class), as an annotator saves them."""
    gimp.mkdir(parents=True)
    colors = [c.colors[0] for c in palette.classes]
    band = -(-size // len(colors))
    rng = np.random.default_rng(0)
    for i in ids:
        mask = np.zeros([size, size, 3], np.uint8)
        for k, color in enumerate(colors):
            mask[k * band:(k + 1) * band] = color
        PIL.Image.fromarray(mask, 'RGB').save(gimp / f'image_{i}_mask.png')
        PIL.Image.fromarray(rng.integers(0, 256, [size, size, 3], dtype=np.uint8), 'RGB').save(gimp / f'image_{i}.jpg')
        PIL.Image.fromarray(rng.integers(0, 256, [size, size], dtype=np.uint8), 'L').save(gimp / f'image_{i}_NIR.jpg')


@pytest.mark.parametrize('name', EXPECTED)
def test_train_config_finds_what_the_pipeline_writes(name, tmp_path, monkeypatch):
    """The documented workflow in a copy of the layout: make_training_data's files (stand-ins), the import of 8
    annotations with the experiment's palette, the checkpoint in EXPERIMENTS/checkpoints/: every file the training
    config names then exists, with as many latents as annotated masks and labels within number_class."""
    root = tmp_path / 'root'
    exp = root / 'EXPERIMENTS' / 'interpreter' / name
    exp.mkdir(parents=True)
    for step in ('generate.json', 'train_datagan.json'):
        shutil.copy(exp_folder(name) / step, exp / step)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f'checkpoints/{name}.pkl not found'):
        load_config(exp / 'generate.json')
    (root / 'EXPERIMENTS' / 'checkpoints').mkdir()
    (root / 'EXPERIMENTS' / 'checkpoints' / f'{name}.pkl').write_bytes(b'stand-in, not read by load_config')
    load_config(exp / 'generate.json')  # make_training_data's config is complete once the generator is in place

    # What make_training_data.py --sv_path <exp> writes (names from the module that writes them).
    rng = np.random.default_rng(1)
    np.save(exp / latents.LATENT_FILE, rng.standard_normal([100, 512]))
    np.save(exp / latents.AVG_FILE, rng.standard_normal([14, 512]).astype(np.float32))
    # The annotator's folder, then prepare_annotations.py --output <processed> --latents <exp>/latent_stylegan.npy.
    palette = load_palette(EXPECTED[name]['palette'])
    ids = [63, 15, 93, 2, 91, 83, 20, 0]
    _fake_annotations(exp / 'annotator', palette, ids)
    processed = exp / EXPECTED[name]['processed']
    import_annotations(exp / 'annotator', processed, palette, latents=exp / latents.LATENT_FILE, ids=ids)

    cfg = load_config(exp / 'train_datagan.json')  # checks every named file
    z = np.load(cfg.annotation_image_latent_path)
    assert z.shape == (cfg.max_training, 512)
    np.testing.assert_array_equal(z, np.load(exp / latents.LATENT_FILE)[ids])
    for k in range(cfg.max_training):
        mask = np.load(f'{cfg.annotation_mask_path}/image_mask{k}.npy')
        assert mask.shape == cfg.dim[:2] and set(np.unique(mask)) == set(range(cfg.number_class))
