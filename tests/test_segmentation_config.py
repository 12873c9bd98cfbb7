"""train_segmentation.py --config: the shipped example parses into the options it states, command-line options win,
and an unknown key is a one-line error naming the file."""

import json

import train_segmentation
from conftest import REPO, assert_one_line_error
from segmentation.evaluate import ClassMap
from training.demo_eyes import DEMO_CLASSES

EXAMPLE = REPO / 'EXPERIMENTS' / 'segmentation' / 'deeplab_synthetic.json'


def _params(argv):
    ctx = train_segmentation.cli.make_context('train_segmentation.py', list(argv))
    return ctx.params


def test_shipped_config_sets_the_options_it_names():
    values = json.loads(EXAMPLE.read_text())
    params = _params(['--config', str(EXAMPLE), '--data', 'd', '--outdir', 'o'])
    assert params['arch'] == values['arch'] == 'deeplabv3_resnet50'
    assert params['modality'] == values['input'] == 'rgbnir'
    assert params['epochs'] == values['epochs'] and params['batch'] == values['batch']
    assert params['class_weights'] == values['class_weights']
    assert int(params['output_stride']) == values['output_stride']
    # The command line overrides the file.
    assert _params(['--config', str(EXAMPLE), '--data', 'd', '--outdir', 'o', '--epochs', '3'])['epochs'] == 3


def test_unknown_config_key_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'epochs': 2, 'epoch_count': 5}))
    code = train_segmentation.main(['--config', str(bad), '--data', str(tmp_path), '--outdir', str(tmp_path / 'o')])
    assert_one_line_error(code, capsys.readouterr().err, 'bad.json', 'epoch_count')
    assert not (tmp_path / 'o').exists()


def test_shipped_class_map_maps_the_renderer_to_ocular_4class():
    cmap = ClassMap.load(REPO / 'EXPERIMENTS' / 'segmentation' / 'demo_renderer_to_ocular_4class.json')
    renderer = DEMO_CLASSES  # the renderer's mask values index these names
    ocular = json.loads((REPO / 'interpreter' / 'palettes' / 'ocular_4class.json').read_text())['classes']
    ocular_names = {c['id']: c['name'] for c in ocular}
    for truth_id, model_id in cmap.mapping.items():
        assert renderer[truth_id] == ocular_names[model_id]
    assert cmap.classes == [ocular_names[i] for i in range(4)]
