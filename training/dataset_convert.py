"""Writing paired datasets: the atomic dataset writer and ``dataset_tool.py convert`` (resize/crop both
modalities and the masks, carry labels over)."""

import contextlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image

import dnnlib
from training.image_pairs import DatasetError, PairedFiles, _is_power_of_two, _progress

# ---------------------------------------------------------------------------------------------------------------------
# Output: a folder or zip written under a temporary name and moved into place at the end.


class DatasetWriter:
    """Collects output files; ``commit()`` moves them to ``dest`` (a folder, or a zip when it ends in .zip).

    Nothing appears under ``dest`` until commit; on error (or ``abort()``) the temporary output is removed. An
    existing ``dest`` is refused unless ``overwrite`` (an existing empty folder is always fine). Zips are stored
    uncompressed with fixed timestamps, so the same content gives the same bytes.
    """

    def __init__(self, dest, overwrite=False):
        self.dest = Path(os.path.abspath(os.fspath(dest)))
        self.is_zip = self.dest.suffix.lower() == '.zip'
        self.overwrite = overwrite
        check_destination(dest, overwrite)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(dnnlib.util.staging_path(self.dest))
        dnnlib.util.remove_path(self.tmp)
        self._zip = None
        if self.is_zip:
            self._zip = zipfile.ZipFile(self.tmp, 'w', compression=zipfile.ZIP_STORED)
        else:
            self.tmp.mkdir()

    def write_bytes(self, rel: str, data: bytes):
        if self._zip is not None:
            info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            self._zip.writestr(info, data)
        else:
            target = self.tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def write_png(self, rel: str, array: np.ndarray, compress_level=6):
        buf = io.BytesIO()
        PIL.Image.fromarray(array).save(buf, format='png', compress_level=compress_level)
        self.write_bytes(rel, buf.getvalue())

    def write_json(self, rel: str, obj):
        self.write_bytes(rel, (json.dumps(obj, indent=1) + '\n').encode('utf-8'))

    def commit(self):
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        dnnlib.util.swap_in(self.tmp, self.dest)

    def abort(self):
        if self._zip is not None:
            with contextlib.suppress(Exception):
                self._zip.close()
            self._zip = None
        with contextlib.suppress(OSError):
            dnnlib.util.remove_path(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def check_destination(dest, overwrite=False):
    """Raise DatasetError when ``dest`` may not be written (exists and not replaceable)."""
    d = Path(os.fspath(dest))
    is_zip = d.suffix.lower() == '.zip'
    if not d.exists():
        return
    if is_zip and d.is_dir():
        raise DatasetError(d, 'is a folder, not a .zip file')
    if not is_zip and not d.is_dir():
        raise DatasetError(d, 'exists and is not a folder')
    if d.is_dir() and not any(d.iterdir()):
        return
    if not overwrite:
        raise DatasetError(d, 'already exists and is not empty; use --overwrite to replace it')


# ---------------------------------------------------------------------------------------------------------------------
# Conversion (dataset_tool.py convert)

TRANSFORMS = (None, 'center-crop', 'center-crop-wide')
RESIZE_FILTERS = {'box': PIL.Image.BOX, 'lanczos': PIL.Image.LANCZOS}


def _output_size(size, transform, resolution):
    """Width and height after the transform, from the input size alone (so it can be checked up front)."""
    w, h = int(size[0]), int(size[1])
    if resolution is not None:
        return resolution, resolution
    if transform == 'center-crop':
        return min(w, h), min(w, h)
    return w, h


def transform_image(img: PIL.Image.Image, transform, resolution, resample) -> PIL.Image.Image:
    """Apply a conversion transform to one image (RGB, grey or an integer mask in mode I with NEAREST)."""
    w, h = img.size
    if transform == 'center-crop':
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
        if resolution is not None and s != resolution:
            img = img.resize((resolution, resolution), resample)
        return img
    if transform == 'center-crop-wide':
        # Scale to the full width, then keep the middle rows (tall images) or letterbox on black (wide images).
        new_h = max(1, int(round(resolution * h / w)))
        if (w, h) != (resolution, new_h):
            img = img.resize((resolution, new_h), resample)
        if new_h >= resolution:
            top = (new_h - resolution) // 2
            return img.crop((0, top, resolution, top + resolution))
        canvas = PIL.Image.new(img.mode, (resolution, resolution), 0)
        canvas.paste(img, (0, (resolution - new_h) // 2))
        return canvas
    if resolution is not None and (w, h) != (resolution, resolution):
        img = img.resize((resolution, resolution), resample)
    return img


def convert_dataset(source, dest, max_images=None, resolution=None, transform=None, resize_filter='lanczos',
                    overwrite=False, progress=False) -> dict:
    """Convert a paired dataset to the standard layout (``images/``, ``NIR/``, ``masks/``, ``dataset.json``).

    Everything is validated before the first file is written; the output appears at ``dest`` (a folder, or an
    uncompressed zip when it ends in .zip) only when complete. Returns a summary dict. Raises DatasetError.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f'transform must be one of {TRANSFORMS}, got {transform!r}')
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f'resize_filter must be one of {sorted(RESIZE_FILTERS)}, got {resize_filter!r}')
    if resolution is not None and (int(resolution) < 4 or not _is_power_of_two(int(resolution))):
        raise DatasetError('--resolution', f'must be a power of two >= 4, got {resolution}')
    if transform == 'center-crop-wide' and resolution is None:
        raise DatasetError('--transform', 'center-crop-wide needs --resolution')
    if max_images is not None and int(max_images) < 1:
        raise DatasetError('--max-images', f'must be at least 1, got {max_images}')
    check_destination(dest, overwrite)

    files = PairedFiles(source, masks='auto', labels='auto')
    count = len(files) if max_images is None else min(len(files), int(max_images))
    out_size = None
    for i in range(count):  # Output geometry, from the headers alone: fail before writing anything.
        w, h = _output_size(files.sizes[i], transform, resolution)
        if w != h or not _is_power_of_two(w):
            fix = 'pass --resolution (and --transform=center-crop for non-square images)'
            raise DatasetError(files.display_rgb(i), f'would be stored as {w}x{h}; images must be square with a '
                                                     f'power-of-two side: {fix}')
        if out_size is None:
            out_size = (w, h)
        elif (w, h) != out_size:
            raise DatasetError(files.display_rgb(i), f'would be stored as {w}x{h} but {files.display_rgb(0)} as '
                                                     f'{out_size[0]}x{out_size[1]}; pass --resolution')

    resample = RESIZE_FILTERS[resize_filter]
    labels = []
    with DatasetWriter(dest, overwrite=overwrite) as writer:
        for i in _progress(range(count), progress, 'converting', total=count):
            name = f'{files.keys[i]}.png'
            rgb = transform_image(PIL.Image.fromarray(files.load_rgb(i)), transform, resolution, resample)
            nir = transform_image(PIL.Image.fromarray(files.load_nir(i)), transform, resolution, resample)
            writer.write_png(f'images/{name}', np.asarray(rgb), compress_level=0)
            writer.write_png(f'NIR/{name}', np.asarray(nir), compress_level=0)
            if files.has_masks:
                mask = files.load_mask(i)
                small = mask.min() >= 0 and mask.max() <= 255
                img = PIL.Image.fromarray(mask.astype(np.uint8 if small else np.int32))
                mask = np.asarray(transform_image(img, transform, resolution, PIL.Image.NEAREST))
                if small:
                    writer.write_png(f'masks/{name}', mask.astype(np.uint8), compress_level=0)
                else:
                    buf = io.BytesIO()
                    np.save(buf, mask.astype(np.int64))
                    writer.write_bytes(f'masks/{files.keys[i]}.npy', buf.getvalue())
            labels.append([name, None if files.labels is None else files.labels[i]])
        all_labelled = files.labels is not None and all(label is not None for _, label in labels)
        writer.write_json('dataset.json', {'labels': labels if all_labelled else None})
        if files.classes is not None:
            writer.write_json('classes.json', files.classes)
    return dict(source=files.path, dest=os.fspath(dest), count=count, resolution=out_size[0],
                masks=files.has_masks, labels=all_labelled, grayscale_converted=files.num_grey_rgb,
                nir_reduced=files.num_rgb_nir)
