"""segmentation.metrics and segmentation.augment: scores checked against hand-computed values and a float64
brute force; augmentation checked against exact flips, the ignore index and seeded reproducibility."""

import numpy as np
import pytest
import torch

from segmentation.augment import AugmentOptions, augment
from segmentation.metrics import (
    IGNORE_INDEX,
    ConfusionMeter,
    confusion_markdown,
    confusion_matrix,
    markdown_table,
    scores,
)

# ------------------------------------------------------------------------------------------------------- metrics


def test_hand_computed_case():
    truth = np.array([[0, 0, 1, 1],
                      [0, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 2, 0, 3]])  # the 3 sits on an ignored pixel: not counted, so class 3 stays absent
    # (truth, pred) pairs of the 7 counted pixels: (0,0) (0,1) (1,1) (1,1) (0,0) (2,2) (2,0)
    expected = np.array([[2, 1, 0, 0],
                         [0, 2, 0, 0],
                         [1, 0, 1, 0],
                         [0, 0, 0, 0]])
    m = confusion_matrix(torch.from_numpy(truth), torch.from_numpy(pred), 4)
    assert m.dtype == torch.int64
    np.testing.assert_array_equal(m.numpy(), expected)
    s = scores(m.numpy(), ['bg', 'a', 'b', 'c'])
    # class 0: tp 2, union 3 + 3 - 2 = 4; class 1: tp 2, union 2 + 3 - 2 = 3; class 2: tp 1, union 2 + 1 - 1 = 2.
    ious = [1 / 2, 2 / 3, 1 / 2, None]
    f1s = [4 / 6, 4 / 5, 2 / 3, None]
    for c, (iou, f1) in enumerate(zip(ious, f1s)):
        row = s['per_class'][c]
        assert row['id'] == c and row['class'] == ['bg', 'a', 'b', 'c'][c]
        if iou is None:
            assert row['iou'] is None and row['f1'] is None
        else:
            assert row['iou'] == pytest.approx(iou, abs=1e-12)
            assert row['f1'] == pytest.approx(f1, abs=1e-12)
    assert [r['pixels'] for r in s['per_class']] == [3, 2, 2, 0]
    assert [r['predicted'] for r in s['per_class']] == [3, 3, 1, 0]
    assert s['miou'] == pytest.approx(5 / 9, abs=1e-12)  # (1/2 + 2/3 + 1/2) / 3, class 3 left out
    assert s['mean_f1'] == pytest.approx(32 / 45, abs=1e-12)  # (2/3 + 4/5 + 2/3) / 3
    assert s['pixel_accuracy'] == pytest.approx(5 / 7, abs=1e-12)
    assert s['pixels'] == 7


def _brute_force(truth, pred, k, ignore=IGNORE_INDEX):
    """Confusion matrix and per-class IoU/F1 by boolean counting in float64."""
    valid = truth != ignore
    m = np.zeros((k, k), np.float64)
    for a in range(k):
        for b in range(k):
            m[a, b] = np.sum((truth == a) & (pred == b) & valid, dtype=np.float64)
    ious, f1s = [], []
    for c in range(k):
        t, p = (truth == c) & valid, (pred == c) & valid
        tp = np.sum(t & p, dtype=np.float64)
        union = np.sum(t | p, dtype=np.float64)
        ious.append(None if union == 0 else tp / union)
        f1s.append(None if union == 0 else 2 * tp / (np.sum(t, dtype=np.float64) + np.sum(p, dtype=np.float64)))
    acc = np.sum((truth == pred) & valid, dtype=np.float64) / np.sum(valid, dtype=np.float64)
    return m, ious, f1s, acc


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_random_arrays_match_float64_brute_force(seed):
    rng = np.random.default_rng(seed)
    k = 5
    truth = rng.integers(0, k, (3, 37, 29))
    # Correlated predictions (so IoUs are not all tiny), some ignored truth pixels.
    pred = np.where(rng.random(truth.shape) < 0.6, truth, rng.integers(0, k, truth.shape))
    truth[rng.random(truth.shape) < 0.15] = IGNORE_INDEX
    m, ious, f1s, acc = _brute_force(truth, pred, k)
    got = confusion_matrix(torch.from_numpy(truth), torch.from_numpy(pred), k).numpy()
    np.testing.assert_array_equal(got, m.astype(np.int64))
    assert got.sum() == np.sum(truth != IGNORE_INDEX)
    s = scores(got)
    for c in range(k):
        assert s['per_class'][c]['iou'] == pytest.approx(ious[c], rel=1e-12)
        assert s['per_class'][c]['f1'] == pytest.approx(f1s[c], rel=1e-12)
    assert s['miou'] == pytest.approx(np.mean(ious), rel=1e-12)
    assert s['mean_f1'] == pytest.approx(np.mean(f1s), rel=1e-12)
    assert s['pixel_accuracy'] == pytest.approx(acc, rel=1e-12)


def test_class_absent_from_truth_and_prediction_is_left_out_of_the_mean():
    rng = np.random.default_rng(5)
    k = 4
    choices = np.array([0, 1, 3])  # class 2 never occurs, in the truth or the prediction
    truth = choices[rng.integers(0, 3, (40, 40))]
    pred = np.where(rng.random(truth.shape) < 0.7, truth, choices[rng.integers(0, 3, truth.shape)])
    _, ious, _, _ = _brute_force(truth, pred, k)
    s = scores(confusion_matrix(torch.from_numpy(truth), torch.from_numpy(pred), k).numpy())
    assert s['per_class'][2]['iou'] is None and s['per_class'][2]['f1'] is None
    present = [ious[c] for c in (0, 1, 3)]
    assert s['miou'] == pytest.approx(np.mean(present), rel=1e-12)
    # Scoring the absent class as 0 or as 1 would give a visibly different mean.
    assert abs(np.mean(present + [0.0]) - s['miou']) > 0.05
    assert abs(np.mean(present + [1.0]) - s['miou']) > 0.05


def test_class_absent_from_truth_but_predicted_scores_zero():
    truth = torch.tensor([0, 0, 1])
    pred = torch.tensor([0, 2, 1])
    s = scores(confusion_matrix(truth, pred, 3).numpy())
    assert s['per_class'][2]['iou'] == 0.0 and s['per_class'][2]['f1'] == 0.0
    assert s['per_class'][2]['pixels'] == 0 and s['per_class'][2]['predicted'] == 1
    assert s['miou'] == pytest.approx((1 / 2 + 1 + 0) / 3, abs=1e-12)


def test_empty_matrix_has_no_scores():
    s = scores(np.zeros((3, 3), np.int64))
    assert s['miou'] is None and s['mean_f1'] is None and s['pixel_accuracy'] is None and s['pixels'] == 0


def test_meter_over_batches_equals_one_big_matrix():
    rng = np.random.default_rng(3)
    k = 4
    batches = []
    for shape in [(2, 16, 16), (1, 16, 16), (3, 8, 20), (5, 3)]:
        t = rng.integers(0, k, shape)
        t[rng.random(shape) < 0.1] = IGNORE_INDEX
        batches.append((t, rng.integers(0, k, shape)))
    meter = ConfusionMeter(k)
    np.testing.assert_array_equal(meter.matrix, np.zeros((k, k), np.int64))  # nothing seen yet
    for t, p in batches:
        meter.update(torch.from_numpy(t), torch.from_numpy(p))
    all_t = np.concatenate([t.ravel() for t, _ in batches])
    all_p = np.concatenate([p.ravel() for _, p in batches])
    big = confusion_matrix(torch.from_numpy(all_t), torch.from_numpy(all_p), k).numpy()
    np.testing.assert_array_equal(meter.matrix, big)
    np.testing.assert_array_equal(meter.matrix, _brute_force(all_t, all_p, k)[0].astype(np.int64))
    assert meter.matrix.dtype == np.int64


@pytest.mark.parametrize('truth, pred', [
    ([0, 1, 3], [0, 1, 1]),  # truth class 3 of 3 classes
    ([0, 1, 2], [0, 3, 1]),  # predicted class 3
    ([0, 1, 2], [0, -1, 1]),  # negative prediction
    ([0, -2, 2], [0, 1, 1]),  # negative truth
])
def test_out_of_range_labels_raise(truth, pred):
    with pytest.raises(ValueError, match='outside 0..2'):
        confusion_matrix(torch.tensor(truth), torch.tensor(pred), 3)
    meter = ConfusionMeter(3)
    with pytest.raises(ValueError):
        meter.update(torch.tensor(truth), torch.tensor(pred))


def test_mismatched_sizes_raise():
    with pytest.raises(ValueError):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long), 2)


def test_markdown_tables():
    m = np.array([[3, 0, 1], [0, 0, 0], [2, 0, 2]])
    s = scores(m, ['bg', 'x', 'y'])
    table = markdown_table({'run': s}, ['bg', 'x', 'y'])
    lines = table.splitlines()
    assert lines[0].startswith('|  | mIoU | IoU bg | IoU x | IoU y | mean F1 | pixel acc.')
    # class x is absent from truth and prediction: shown as a dash, not as 0 or 1
    cells = [c.strip() for c in lines[2].strip('|').split('|')]
    assert cells[0] == 'run' and cells[3] == '–'
    assert float(cells[1]) == pytest.approx((3 / 6 + 2 / 5) / 2, abs=5e-4)
    assert float(cells[2]) == pytest.approx(0.5, abs=5e-4) and float(cells[4]) == pytest.approx(0.4, abs=5e-4)
    conf = confusion_markdown(m, ['bg', 'x', 'y']).splitlines()
    assert conf[2] == '| bg | 75.0% | 0.0% | 25.0% |'
    assert conf[3] == '| x | 0.0% | 0.0% | 0.0% |'  # an empty row stays 0, not NaN
    assert conf[4] == '| y | 50.0% | 0.0% | 50.0% |'


# ---------------------------------------------------------------------------------------------------- augmentation


def _gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _batch(n, h, w, c=4, k=4, seed=0):
    """uint8-valued images in [0, 1] and masks that depend on the image (so a flip of one shows in the other)."""
    g = _gen(seed)
    images = torch.randint(0, 256, (n, c, h, w), generator=g).float() / 255
    masks = (images[:, 0] * k).long().clamp(max=k - 1)
    return images, masks


def test_hflip_only_gives_the_input_or_its_exact_mirror_with_the_mask():
    images, masks = _batch(24, 32, 32)
    out_i, out_m = augment(images, masks, 'rgbnir', AugmentOptions(hflip=True, scale=1, jitter=0), _gen(1))
    assert out_i.shape == images.shape and out_i.dtype == images.dtype
    assert out_m.shape == masks.shape and out_m.dtype == torch.int64
    flipped = []
    for i in range(len(images)):
        same = torch.equal(out_i[i], images[i]) and torch.equal(out_m[i], masks[i])
        mirror = torch.equal(out_i[i], images[i].flip(-1)) and torch.equal(out_m[i], masks[i].flip(-1))
        assert same != mirror, f'sample {i}: neither the input nor its mirror (image and mask together)'
        flipped.append(mirror)
    assert 0 < sum(flipped) < len(flipped)  # both outcomes occur (p = 2 * 2**-24 that they would not)


def test_hflip_at_odd_sizes_keeps_image_and_mask_together():
    images, masks = _batch(12, 33, 17)
    out_i, out_m = augment(images, masks, 'rgbnir', AugmentOptions(hflip=True, scale=1, jitter=0), _gen(2))
    for i in range(len(images)):
        mirror = torch.equal(out_m[i], masks[i].flip(-1))
        assert mirror or torch.equal(out_m[i], masks[i])
        ref = images[i].flip(-1) if mirror else images[i]
        # Bilinear resampling at pixel centres; off by float rounding only, far below one grey level.
        assert (out_i[i] - ref).abs().max() < 1e-5


def test_vflip_gives_one_of_the_four_mirrors():
    images, masks = _batch(16, 16, 16)
    out_i, out_m = augment(images, masks, 'rgbnir', AugmentOptions(hflip=True, vflip=True, scale=1, jitter=0), _gen(3))
    seen = set()
    for i in range(len(images)):
        found = [dims for dims in ((), (-1,), (-2,), (-2, -1))
                 if torch.equal(out_m[i], masks[i].flip(dims) if dims else masks[i])
                 and (out_i[i] - (images[i].flip(dims) if dims else images[i])).abs().max() < 1e-5]
        assert len(found) == 1, i  # (a vertical flip is off by float rounding, far below one grey level)
        seen.add(found[0])
    assert len(seen) >= 3


def test_zooming_out_marks_outside_pixels_ignored():
    n, h, w = 24, 32, 32
    g = _gen(4)
    images = torch.rand(n, 4, h, w, generator=g) * 0.5  # interior in [0, 0.5]
    images[:, :, 0, :] = images[:, :, -1, :] = images[:, :, :, 0] = images[:, :, :, -1] = 1.0  # a white frame
    masks = torch.ones(n, h, w, dtype=torch.long)
    out_i, out_m = augment(images, masks, 'rgbnir', AugmentOptions(hflip=False, scale=4, jitter=0), _gen(5))
    assert set(out_m.unique().tolist()) <= {1, IGNORE_INDEX}
    ignored = out_m == IGNORE_INDEX
    per_sample = ignored.flatten(1).sum(1)
    assert (per_sample > 0).any() and (per_sample == 0).any()  # some zoomed out, some zoomed in
    # Outside pixels repeat the image's edge (the white frame) and are ignored in the mask ...
    outside_image = (out_i > 0.999).all(1)
    assert outside_image[ignored].all()
    # ... while clearly interior image pixels are never ignored.
    assert not ignored[(out_i < 0.6).all(1)].any()
    for i in range(n):
        valid = ~ignored[i]
        rows, cols = valid.any(1).nonzero().flatten(), valid.any(0).nonzero().flatten()
        assert valid[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all(), 'the kept view is a rectangle'


def test_zooming_in_keeps_every_pixel():
    # scale 1.0001: zooms in or out by at most 0.01 %; no pixel of a 32-px image comes from outside.
    images, masks = _batch(8, 32, 32)
    _, out_m = augment(images, masks, 'rgbnir', AugmentOptions(hflip=False, scale=1.0001, jitter=0), _gen(6))
    assert not (out_m == IGNORE_INDEX).any()


@pytest.mark.parametrize('modality, channels', [('rgb', 3), ('nir', 1), ('rgbnir', 4)])
def test_jitter_leaves_masks_and_keeps_range(modality, channels):
    images, masks = _batch(16, 24, 24, c=channels)
    images[:, :, :4] = 1.0  # saturated and black areas, to exercise the clamp
    images[:, :, 4:8] = 0.0
    out_i, out_m = augment(images, masks, modality, AugmentOptions(hflip=False, scale=1, jitter=0.5), _gen(7))
    assert torch.equal(out_m, masks)
    assert out_i.shape == images.shape
    assert out_i.min() >= 0 and out_i.max() <= 1
    assert (out_i - images).abs().max() > 0.05  # jitter did change the images


def test_jitter_is_drawn_separately_for_rgb_and_nir():
    # Grey pairs with NIR == R == G == B: equal factors would keep the NIR channel equal to the RGB ones.
    grey = torch.rand(16, 1, 16, 16, generator=_gen(8))
    images = grey.repeat(1, 4, 1, 1)
    masks = torch.zeros(16, 16, 16, dtype=torch.long)
    out, _ = augment(images, masks, 'rgbnir', AugmentOptions(hflip=False, scale=1, jitter=0.5), _gen(9))
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5) and torch.allclose(out[:, 0], out[:, 2], atol=1e-5)
    differs = (out[:, 3] - out[:, 0]).abs().flatten(1).max(1).values > 1e-3
    assert differs.float().mean() > 0.8


def test_same_generator_seed_gives_the_same_augmentation():
    images, masks = _batch(8, 32, 32)
    opts = AugmentOptions(hflip=True, vflip=True, scale=1.5, jitter=0.3)
    a = augment(images, masks, 'rgbnir', opts, _gen(11))
    b = augment(images, masks, 'rgbnir', opts, _gen(11))
    c = augment(images, masks, 'rgbnir', opts, _gen(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_disabled_augmentation_returns_the_input():
    images, masks = _batch(4, 16, 16)
    out_i, out_m = augment(images, masks, 'rgbnir', AugmentOptions(hflip=False, scale=1, jitter=0), _gen(0))
    assert torch.equal(out_i, images) and torch.equal(out_m, masks)


@pytest.mark.parametrize('kwargs', [dict(scale=0.9), dict(scale=5), dict(jitter=1.0), dict(jitter=-0.1)])
def test_bad_augment_options_raise(kwargs):
    with pytest.raises(ValueError):
        AugmentOptions(**kwargs)
