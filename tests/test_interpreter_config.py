"""interpreter.config: the authors' example configs load, every bad key is named in a one-line error, the
*_stylegan1.npy name mismatch of the originals is reported with the existing file, paths and overrides resolve."""

import json
import os
import shutil

import pytest

from conftest import shared_dir
from interpreter.config import VALID_KEYS, ConfigError, load_config

EXAMPLE = shared_dir() / 'data' / 'crosseyed_example'
EXP_DIR = 'IJCB_EXPERIMENTS/interpreter/CrossEyed_NIR_RGB'
CKPT = 'IJCB_EXPERIMENTS/checkpoints/IJCB_2022_checkpoints/CrossEyed_NIR_RGB_002080.pkl'


@pytest.fixture(scope='module')
def example():
    if not (EXAMPLE / 'train_datagan.json').is_file():
        if os.environ.get('BIGAN_REQUIRE_SHARED'):
            pytest.fail(f'{EXAMPLE} not found')
        pytest.skip(f'{EXAMPLE} not found (set BIGAN_SHARED)')
    return EXAMPLE


@pytest.fixture
def project(example, tmp_path):
    """The originals' layout: <root>/<exp_dir>/ holds the example files, <root>/<checkpoint> exists (a dummy)."""
    exp = tmp_path / 'root' / EXP_DIR
    shutil.copytree(example, exp)
    for p in exp.rglob('*'):
        p.chmod(0o755 if p.is_dir() else 0o644)
    ckpt = tmp_path / 'root' / CKPT
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b'not read by load_config')
    return tmp_path / 'root', exp


DELETE = object()  # write_config(key=DELETE) leaves the key out


def write_config(tmp_path, **changes):
    raw = json.loads((EXAMPLE / 'generate.json').read_text())
    raw.update(changes)
    for key in [k for k, v in changes.items() if v is DELETE]:
        del raw[key]
    path = tmp_path / 'cfg.json'
    path.write_text(json.dumps(raw))
    return path


def assert_one_line(exc_info, *fragments):
    message = str(exc_info.value)
    assert '\n' not in message, message
    for fragment in fragments:
        assert str(fragment) in message, message


# ------------------------------------------------------------------------------------------- the examples


@pytest.mark.parametrize('name', ['generate.json', 'train_datagan.json'])
def test_example_configs_parse(example, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the originals' layout: relative paths are taken from the cwd
    cfg = load_config(example / name, check_files=False)
    assert cfg.exp_dir == str(tmp_path / EXP_DIR)
    assert cfg.stylegan_checkpoint == str(tmp_path / CKPT)
    assert cfg.dim == (256, 256, 4992) and cfg.resolution == 256 and cfg.category == 'eyes_256'
    assert (cfg.number_class, cfg.max_training, cfg.batch_size, cfg.upsample_mode) == (4, 8, 64, 'bilinear')
    assert cfg.stylegan_ver == '2' and cfg.annotation_data_from_w is False
    # The originals' unused keys are kept aside, not validated.
    assert cfg.ignored == {'debug': False, 'deeplab_res': 256, 'testing_data_number_class': 4, 'testing_path': '',
                           'upsample_threshold': '8'}
    # New keys get their documented defaults.
    assert (cfg.truncation_psi, cfg.truncation_cutoff, cfg.noise_mode, cfg.seed) == (0.7, 7, 'const', 0)
    assert (cfg.generator_key, cfg.force_fp32, cfg.uncertainty_portion, cfg.num_workers) == ('G_ema', True, 0.1, 0)
    if name == 'generate.json':
        assert cfg.model_num == 1 and cfg.expand_to_dimensions == 14
        assert cfg.average_latent is None and cfg.annotation_mask_path is None  # "" means not set
        assert cfg.annotation_image_latent_path is None
    else:
        assert cfg.model_num == 10 and cfg.expand_to_dimensions is None
        assert cfg.annotation_mask_path == str(tmp_path / EXP_DIR / 'eyes_processed')
        assert cfg.average_latent == str(tmp_path / EXP_DIR / 'avg_latent_stylegan1.npy')
        assert cfg.annotation_image_latent_path == str(tmp_path / EXP_DIR / 'latent_stylegan1.npy')


def test_originals_layout_resolves_from_any_cwd(project, tmp_path, monkeypatch):
    root, exp = project
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(exp / 'generate.json')  # all named files exist: the checkpoint (dummy); no data keys
    assert cfg.exp_dir == str(exp) and cfg.stylegan_checkpoint == str(root / CKPT)


def test_stylegan1_name_mismatch_is_reported_with_the_existing_file(project):
    root, exp = project
    with pytest.raises(ConfigError) as info:
        load_config(exp / 'train_datagan.json')
    assert_one_line(info, 'train_datagan.json', 'latent_stylegan1.npy not found', "'latent_stylegan.npy'")
    with pytest.raises(ConfigError) as info:
        load_config(exp / 'train_datagan.json', check_files=['average_latent'])
    assert_one_line(info, 'average_latent', 'avg_latent_stylegan1.npy not found', "'avg_latent_stylegan.npy'")
    # Never substituted silently: once the named files exist, they are the ones used.
    for name in ('latent_stylegan', 'avg_latent_stylegan'):
        shutil.copy(exp / f'{name}.npy', exp / f'{name}1.npy')
    cfg = load_config(exp / 'train_datagan.json')
    assert cfg.average_latent == str(exp / 'avg_latent_stylegan1.npy')
    assert cfg.annotation_image_latent_path == str(exp / 'latent_stylegan1.npy')


def test_missing_files_are_named(project):
    root, exp = project
    (root / CKPT).unlink()
    with pytest.raises(ConfigError) as info:
        load_config(exp / 'generate.json')
    assert_one_line(info, 'stylegan_checkpoint', 'CrossEyed_NIR_RGB_002080.pkl not found')
    shutil.rmtree(exp / 'eyes_processed')
    with pytest.raises(ConfigError) as info:
        load_config(exp / 'train_datagan.json', check_files=['annotation_mask_path'])
    assert_one_line(info, 'annotation_mask_path', 'eyes_processed not found')
    cfg = load_config(exp / 'train_datagan.json', check_files=False)
    with pytest.raises(ConfigError) as info:
        cfg.check_files(['annotation_image_latent_path'])
    assert_one_line(info, 'annotation_image_latent_path')


# ------------------------------------------------------------------------------------------- bad keys


BAD_VALUES = [
    ('batch_size', 0, 'at least 1'),
    ('batch_size', '64', 'integer'),
    ('batch_size', True, 'integer'),
    ('model_num', 2.5, 'integer'),
    ('number_class', 1, 'at least 2'),
    ('max_training', -3, 'at least 1'),
    ('dim', [256, 256], 'three positive integers'),
    ('dim', [256, 256, 0], 'three positive integers'),
    ('dim', [384, 512, 5056], 'must be equal'),
    ('dim', 'abc', 'three positive integers'),
    ('category', 'cars_512', "unknown category 'cars_512'"),
    ('category', 5, 'unknown category'),
    ('stylegan_ver', '1', 'only "2"'),
    ('upsample_mode', 'bicubic', "'bilinear', 'nearest'"),
    ('annotation_data_from_w', 'false', 'true or false'),
    ('exp_dir', '', 'must not be empty'),
    ('exp_dir', 3, 'a path'),
    ('average_latent', 7, 'a path'),
    ('truncation_psi', 'strong', 'finite number'),
    ('truncation_psi', float('nan'), 'finite number'),
    ('truncation_cutoff', -1, 'at least 0'),
    ('noise_mode', 'fixed', "'const', 'random', 'none'"),
    ('generator_key', 'D', "'G_ema', 'G'"),
    ('seed', -1, 'at least 0'),
    ('uncertainty_portion', 1.0, '< 1'),
    ('uncertainty_top_fraction', 0, '> 0'),
    ('learning_rate', 0, '> 0'),
    ('resolution', 200, 'power of two'),
    ('resolution', 512, "contradicts category 'eyes_256'"),
    ('force_fp32', 1, 'true or false'),
]


@pytest.mark.parametrize('key,value,fragment', BAD_VALUES, ids=[f'{k}={v!r}' for k, v, _ in BAD_VALUES])
def test_bad_value_names_the_key(example, tmp_path, key, value, fragment):
    path = write_config(tmp_path, **{key: value})
    with pytest.raises(ConfigError) as info:
        load_config(path, check_files=False)
    assert_one_line(info, str(path), f'{key}:', fragment)


def test_unknown_key_lists_the_valid_ones(example, tmp_path):
    path = write_config(tmp_path, learning_rat=0.01)
    with pytest.raises(ConfigError) as info:
        load_config(path, check_files=False)
    assert_one_line(info, str(path), "unknown key 'learning_rat'", 'learning_rate', 'exp_dir', 'truncation_psi')


@pytest.mark.parametrize('key', ['exp_dir', 'dim', 'stylegan_checkpoint'])
def test_required_key_missing(example, tmp_path, key):
    path = write_config(tmp_path, **{key: DELETE})
    with pytest.raises(ConfigError) as info:
        load_config(path, check_files=False)
    assert_one_line(info, str(path), key, 'required')


def test_file_level_errors(tmp_path):
    cases = {'missing.json': None, 'broken.json': '{"exp_dir": "x",', 'list.json': '[1, 2]',
             'dup.json': '{"exp_dir": "a", "exp_dir": "b"}'}
    fragments = {'missing.json': 'file not found', 'broken.json': 'not valid JSON', 'list.json': 'JSON object',
                 'dup.json': "duplicate key 'exp_dir'"}
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert_one_line(info, str(path), fragments[name])


def test_resolution_without_category(example, tmp_path):
    cfg = load_config(write_config(tmp_path, category=DELETE, dim=[64, 64, 100]), check_files=False)
    assert cfg.category is None and cfg.resolution == 64
    cfg = load_config(write_config(tmp_path, category=DELETE, dim=[64, 64, 100], resolution=32), check_files=False)
    assert cfg.resolution == 32 and cfg.dim[1] == 64
    cfg = load_config(write_config(tmp_path, category='eyes_512', dim=[512, 512, 6016]), check_files=False)
    assert cfg.resolution == 512
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, category=DELETE, dim=[100, 100, 5]), check_files=False)
    assert_one_line(info, 'dim:', 'power of two')


def test_new_keys_and_null_cutoff(example, tmp_path):
    path = write_config(tmp_path, truncation_psi=0.5, truncation_cutoff=None, noise_mode='random', seed=1111,
                        generator_key='G', force_fp32=False, uncertainty_portion=0.0, num_workers=2)
    cfg = load_config(path, check_files=False)
    assert (cfg.truncation_psi, cfg.truncation_cutoff, cfg.noise_mode, cfg.seed) == (0.5, None, 'random', 1111)
    assert (cfg.generator_key, cfg.force_fp32, cfg.uncertainty_portion, cfg.num_workers) == ('G', False, 0.0, 2)
    assert set(cfg.to_dict()) == set(VALID_KEYS) - {'debug', 'deeplab_res', 'testing_data_number_class',
                                                     'testing_path', 'upsample_threshold'}


def test_overrides(example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = example / 'train_datagan.json'
    cfg = load_config(path, dict(exp_dir='other/exp', stylegan_checkpoint='nets/g.pkl', model_num=3,
                                 number_class=None, truncation_psi=1), check_files=False)
    # Overridden relative paths are taken from the cwd; data keys then follow the new exp_dir.
    assert cfg.exp_dir == str(tmp_path / 'other' / 'exp')
    assert cfg.stylegan_checkpoint == str(tmp_path / 'nets' / 'g.pkl')
    assert cfg.average_latent == str(tmp_path / 'other' / 'exp' / 'avg_latent_stylegan1.npy')
    assert cfg.model_num == 3 and cfg.truncation_psi == 1.0
    assert cfg.number_class == 4  # None means "not given"
    url = 'https://example.org/net.pkl'
    assert load_config(path, dict(stylegan_checkpoint=url), check_files=['stylegan_checkpoint']) \
        .stylegan_checkpoint == url  # URLs are kept, not checked on disk
    with pytest.raises(ConfigError) as info:
        load_config(path, dict(model_num=0), check_files=False)
    assert_one_line(info, 'model_num:', 'at least 1')
    with pytest.raises(ConfigError) as info:
        load_config(path, dict(nonsense=1), check_files=False)
    assert_one_line(info, "'nonsense'", 'valid keys')


def test_require(example):
    cfg = load_config(example / 'generate.json', check_files=False)
    cfg.require('number_class', 'dim')
    with pytest.raises(ConfigError) as info:
        cfg.require('annotation_image_latent_path')
    assert_one_line(info, 'generate.json', 'annotation_image_latent_path')
