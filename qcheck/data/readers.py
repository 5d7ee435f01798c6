"""Calibration and evaluation data: readers for the layouts users have.

A data set is a list of samples; a sample is `{input name: array}` shaped
exactly like the model's inputs. Layouts (`format:` in the policy, or found
by looking at the folder):

- `npy-per-input`: one sub-folder per model input holding 0.npy, 1.npy, ...
  (the layout of Horizon's debug tool);
- `npy`: a folder of .npy files, one sample each, for single-input models;
- `npz`: a folder of .npz files keyed by input name, one sample each, or one
  .npz file whose arrays stack samples along a new first axis;
- `images`: a folder of images, turned into input by the policy's `preprocess:`.

Samples load lazily and are checked as they load: shape, dtype, NaN/Inf. A
problem names the file and the input.
"""

from __future__ import annotations

import math
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcheck.errors import DataError, Problem
from qcheck.model.prepare import InputInfo
from qcheck.policy.spec import DataSource, Preprocess

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


def natural_key(path: Path) -> list:
    """Sort 2.npy before 10.npy."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


@dataclass
class Sample:
    label: str  # file name(s), for messages
    load: Callable[[], dict[str, np.ndarray]]


@dataclass
class DataSet:
    """Lazily loaded, validated samples of one data source."""

    source: Path
    format: str
    samples: list[Sample]
    inputs: list[InputInfo]

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self.samples)):
            yield self[i]

    # the sample read last, by any data set: when ONNX Runtime fails on a value (an index out of range), the
    # run names it (`model.runtime.run_failure`)
    last_read: tuple[Path, str] | None = None

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        sample = self.samples[i]
        DataSet.last_read = (self.source, sample.label)
        return check_sample(sample.load(), self.inputs, sample.label)

    def describe(self) -> dict:
        return {"source": str(self.source), "format": self.format, "samples": len(self)}


# --------------------------------------------------------------------------- layouts


def detect_format(path: Path, inputs: list[InputInfo]) -> str:
    if path.is_file():
        if path.suffix == ".npz":
            return "npz"
        if path.suffix == ".npy":
            return "npy"
        raise DataError(Problem("a data path must be a folder or an .npz file", file=str(path)))
    names = {i.name for i in inputs}
    subdirs = {p.name for p in path.iterdir() if p.is_dir()}
    if names and names <= subdirs:
        return "npy-per-input"
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    suffixes = {p.suffix.lower() for p in files}
    if not files:
        hint = None
        if subdirs:
            hint = (f"it has sub-folders ({', '.join(sorted(subdirs)[:5])}); for one folder per input they must be "
                    f"named after the model's inputs: {', '.join(sorted(names))}")
        raise DataError(Problem("data folder is empty", file=str(path), hint=hint))
    if ".npz" in suffixes:
        return "npz"
    if ".npy" in suffixes:
        return "npy"
    if suffixes & IMAGE_SUFFIXES:
        return "images"
    raise DataError(Problem(f"cannot tell what this data folder holds (files end in {', '.join(sorted(suffixes))})",
                            file=str(path), hint="use .npy, .npz or image files, or set `format:`"))


def open_data(source: DataSource, inputs: list[InputInfo], preprocess: Preprocess,
              check_first: bool = True) -> DataSet:
    """The samples of a data source; checks the layout and (unless told not to: `qcheck validate`
    checks every sample itself) the first sample before anything runs."""
    path = source.path
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(Problem("data not found", file=str(path))) from None
    except OSError as exc:
        raise DataError(Problem(f"cannot read the data: {exc.strerror or exc}", file=str(path))) from None
    if not stat.S_ISDIR(mode) and not stat.S_ISREG(mode):
        raise DataError(Problem("a data path must be a folder or an .npz file, not a pipe, device or socket",
                                file=str(path)))
    fmt = detect_format(path, inputs) if source.format == "auto" else source.format
    readers = {
        "npy-per-input": _npy_per_input,
        "npy": _npy_folder,
        "npz": _npz,
        "images": _images,
    }
    samples = readers[fmt](path, inputs, preprocess)
    if not samples:
        raise DataError(Problem(f"no samples found ({fmt} layout)", file=str(path)))
    if source.limit:
        samples = samples[: source.limit]
    data = DataSet(path, fmt, samples, inputs)
    if check_first:
        data[0]  # fail early, before any model runs, if the first sample does not fit
    return data


def regular_files(paths, folder: Path) -> list[Path]:
    """The sample files, each checked to be a regular file: reading a pipe or a device would never end."""
    out = []
    for f in paths:
        try:
            mode = f.stat().st_mode
        except OSError as exc:
            raise DataError(Problem(f"cannot read this data file: {exc.strerror or exc}", file=str(f))) from None
        if not stat.S_ISREG(mode):
            raise DataError(Problem("this data file is not a regular file (a pipe, device or socket); qcheck reads "
                                    "only regular files", file=str(f), hint=f"remove it from {folder}")) from None
        out.append(f)
    return out


NPY_MAGIC = b"\x93NUMPY"


def _load_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as fh:  # numpy reads a file without its header as a pickle, and says so
            header = fh.read(len(NPY_MAGIC))
        if header == NPY_MAGIC:
            return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(Problem(f"cannot read .npy file: {exc}", file=str(path))) from exc
    raise DataError(Problem("not a .npy file (it does not start with NumPy's header)", file=str(path),
                            hint="save samples with numpy.save, or remove this file from the folder"))


def _npy_folder(path: Path, inputs: list[InputInfo], _pre: Preprocess) -> list[Sample]:
    if len(inputs) != 1:
        raise DataError(Problem(
            f"a folder of .npy files works for single-input models; this model has {len(inputs)} inputs "
            f"({', '.join(i.name for i in inputs)})", file=str(path),
            hint="use one sub-folder per input (0.npy, 1.npy ...) or .npz files keyed by input name"))
    name = inputs[0].name
    files = regular_files(sorted((p for p in path.glob("*.npy")) if path.is_dir() else [path], key=natural_key), path)
    return [Sample(f.name, lambda f=f: {name: _load_npy(f)}) for f in files]


def _npy_per_input(path: Path, inputs: list[InputInfo], _pre: Preprocess) -> list[Sample]:
    per_input = {i.name: regular_files(sorted((path / i.name).glob("*.npy"), key=natural_key), path) for i in inputs}
    counts = {k: len(v) for k, v in per_input.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise DataError(Problem(f"the input folders hold different numbers of samples ({listing})", file=str(path)))
    for k, files in per_input.items():
        names = [f.name for f in files]
        first = per_input[inputs[0].name]
        if names != [f.name for f in first]:
            raise DataError(Problem(f"file names in {k}/ do not match those in {inputs[0].name}/", file=str(path / k)))
    n = next(iter(counts.values()), 0)
    return [
        Sample(f"{per_input[inputs[0].name][i].name}",
               lambda i=i: {k: _load_npy(files[i]) for k, files in per_input.items()})
        for i in range(n)
    ]


def _check_npz_sizes(f: Path) -> None:
    """A compressed .npz can declare far more than its file size (a zip bomb: 40 GB of zeros in 40 MB). Each
    array's size is read from its header and refused above half this machine's memory, before anything is
    decompressed."""
    limit = _physical_memory() // 2
    try:
        with zipfile.ZipFile(f) as zf:
            for member in zf.infolist():
                if not member.filename.endswith(".npy"):
                    continue
                with zf.open(member) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version not in ((1, 0), (2, 0)):  # 3.0 (utf-8 field names): np.load reads it
                        continue
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = header(fh)
                size = math.prod(shape) * dtype.itemsize
                if size > limit:
                    raise DataError(Problem(
                        f"array '{member.filename[:-4]}' declares shape {list(shape)} of {dtype}: "
                        f"{size / 2**30:.1f} GiB, more than half of this machine's {limit * 2 / 2**30:.1f} GiB of memory",
                        file=str(f), hint="store the samples as separate files, or check how this file was written"))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return  # not readable as a zip of .npy: np.load gives the message


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


def _npz(path: Path, inputs: list[InputInfo], _pre: Preprocess) -> list[Sample]:
    def read(f: Path) -> dict[str, np.ndarray]:
        _check_npz_sizes(f)
        try:
            with np.load(f, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as exc:
            raise DataError(Problem(f"cannot read .npz file: {exc}", file=str(f))) from exc

    if path.is_file():
        arrays = read(path)
        _check_keys(arrays, inputs, path)
        ranks = {i.name: len(i.shape) for i in inputs}
        stacked = {k: arrays[k].ndim == ranks[k] + 1 for k in ranks}
        if all(stacked.values()):
            counts = {arrays[k].shape[0] for k in ranks}
            if len(counts) != 1:
                raise DataError(Problem("the arrays in this .npz stack different numbers of samples", file=str(path)))
            n = counts.pop()
            return [Sample(f"{path.name}[{i}]", lambda i=i: {k: arrays[k][i] for k in ranks}) for i in range(n)]
        return [Sample(path.name, lambda: {k: arrays[k] for k in ranks})]
    files = regular_files(sorted(path.glob("*.npz"), key=natural_key), path)

    def one(f: Path) -> dict[str, np.ndarray]:
        arrays = read(f)
        _check_keys(arrays, inputs, f)
        return {i.name: arrays[i.name] for i in inputs}

    return [Sample(f.name, lambda f=f: one(f)) for f in files]


def _check_keys(arrays: dict, inputs: list[InputInfo], path: Path) -> None:
    names = {i.name for i in inputs}
    missing = sorted(names - set(arrays))
    if missing:
        raise DataError(Problem(
            f"the .npz file lacks array(s) for input(s) {', '.join(missing)}; it has: {', '.join(sorted(arrays)) or 'nothing'}",
            file=str(path), hint="key each array by the model input's name"))


def _images(path: Path, inputs: list[InputInfo], pre: Preprocess) -> list[Sample]:
    if len(inputs) != 1:
        raise DataError(Problem(f"an image folder works for single-input models; this model has {len(inputs)} inputs",
                                file=str(path)))
    info = inputs[0]
    if len(info.shape) != 4:
        raise DataError(Problem(f"images need a 4-D input (N, C, H, W or N, H, W, C); input '{info.name}' has shape "
                                f"{info.shape}", file=str(path)))
    files = regular_files(sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key),
                          path)
    size = pre.size or _spatial_size(info, pre.layout)
    if size is None:
        raise DataError(Problem(
            f"input '{info.name}' has dynamic height/width {info.shape}, so the image size is unknown",
            file=str(path), hint="set data.preprocess.size: [height, width] or inputs.<name>.shape in the policy"))
    return [Sample(f.name, lambda f=f: {info.name: load_image(f, size, pre, info)}) for f in files]


def _spatial_size(info: InputInfo, layout: str) -> tuple[int, int] | None:
    h, w = (info.shape[2], info.shape[3]) if layout == "NCHW" else (info.shape[1], info.shape[2])
    return (h, w) if isinstance(h, int) and isinstance(w, int) else None


PIXELS_VARIABLE = "QCHECK_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 100_000_000


def max_image_pixels() -> int:
    """The image size limit; a value that is not a positive whole number is the user's mistake, not a default."""
    text = os.environ.get(PIXELS_VARIABLE)
    if text is None or not text.strip():
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise DataError(Problem(f"the environment variable {PIXELS_VARIABLE} is {text!r}, not a positive whole "
                                "number of pixels", hint=f"set it to a number such as {DEFAULT_MAX_PIXELS}, or "
                                "unset it for that default"))
    return value


def load_image(path: Path, size: tuple[int, int], pre: Preprocess, info: InputInfo) -> np.ndarray:
    """Decode, convert colour, resize (bilinear), scale, normalize and lay out one image."""
    from PIL import Image, UnidentifiedImageError

    limit = max_image_pixels()
    if size[0] * size[1] > limit:  # the target, not the file: a typo in the policy's shape must not fill the memory
        raise DataError(Problem(f"input '{info.name}': images would be resized to {size[0]}x{size[1]} = "
                                f"{size[0] * size[1]:,} pixels, more than the limit of {limit:,}", file=str(path),
                                hint=f"check the input's shape (policy `inputs:`), or raise the limit with the "
                                     f"environment variable {PIXELS_VARIABLE}"))
    Image.MAX_IMAGE_PIXELS = limit  # PIL refuses twice this when it opens the file, and warns above it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > limit:
                    raise Image.DecompressionBombError(f"{img.width}x{img.height}")
                if img.mode.startswith(("I", "F")):  # PIL's conversion to 8 bits would clip every value over 255
                    raise DataError(Problem(
                        f"the image has {'16-bit' if ';16' in img.mode else '32-bit'} pixels (mode {img.mode}); the "
                        "image reader takes 8-bit images, and converting would clip every value above 255",
                        file=str(path), hint="save the samples as 8-bit images, or preprocess them into .npy arrays"))
                img = img.convert("L" if pre.color == "GRAY" else "RGB")
            img = fit_image(img, size, pre)
            a = np.asarray(img, dtype=np.float32)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(Problem(f"the image is larger than {limit:,} pixels (the limit guards against decompression "
                                "bombs)", file=str(path), hint=f"resize it, or raise the limit with the environment "
                                f"variable {PIXELS_VARIABLE}")) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise DataError(Problem(f"cannot decode image: {exc}", file=str(path))) from None
    if a.ndim == 2:
        a = a[:, :, None]
    if pre.color == "BGR":
        a = a[:, :, ::-1]
    a = a * np.float32(pre.scale)
    channels = a.shape[2]
    if pre.mean is not None:
        a = a - _per_channel(pre.mean, channels, "mean", path)
    if pre.std is not None:
        a = a / _per_channel(pre.std, channels, "std", path)
    a = a.transpose(2, 0, 1) if pre.layout == "NCHW" else a
    return np.ascontiguousarray(a[None]).astype(info.dtype if info.dtype.startswith("float") else np.float32)


SHORT_SIDE_RATIO = 256 / 224  # torchvision's ImageNet recipe: resize to 256, crop 224


def fit_image(img, size: tuple[int, int], pre: Preprocess):
    """Bring a PIL image to `size` (height, width) the way `pre.resize` says (bilinear throughout)."""
    from PIL import Image

    h, w = size
    if pre.resize == "stretch":
        return img.resize((w, h), Image.BILINEAR)
    iw, ih = img.size
    if pre.resize == "short_side_crop":
        short = pre.resize_short or round(max(h, w) * SHORT_SIDE_RATIO)
        k = short / min(iw, ih)
        rw, rh = max(w, round(iw * k)), max(h, round(ih * k))
        img = img.resize((rw, rh), Image.BILINEAR)
        left, top = (rw - w) // 2, (rh - h) // 2
        return img.crop((left, top, left + w, top + h))
    # letterbox: fit inside, keep the aspect ratio, pad around the centre
    k = min(w / iw, h / ih)
    rw, rh = max(1, round(iw * k)), max(1, round(ih * k))
    fill = round(pre.pad_value)
    canvas = Image.new(img.mode, (w, h), fill if img.mode == "L" else (fill,) * 3)
    canvas.paste(img.resize((rw, rh), Image.BILINEAR), ((w - rw) // 2, (h - rh) // 2))
    return canvas


def _per_channel(values: list[float], channels: int, what: str, path: Path) -> np.ndarray:
    if len(values) not in (1, channels):
        raise DataError(Problem(f"preprocess.{what} has {len(values)} values but the image has {channels} channel(s)",
                                file=str(path)))
    return np.asarray(values, dtype=np.float32).reshape(1, 1, -1)


# --------------------------------------------------------------------------- checks


def check_sample(sample: dict[str, np.ndarray], inputs: list[InputInfo], label: str) -> dict[str, np.ndarray]:
    """Shape, dtype and finiteness of one sample against the model's inputs; returns it, fitted."""
    out = {}
    for info in inputs:
        if info.name not in sample:
            raise DataError(Problem(f"sample {label} has no data for input '{info.name}'"))
        a = np.asarray(sample[info.name])
        expected = info.shape
        if expected and a.ndim == len(expected) - 1 and (expected[0] == 1 or not isinstance(expected[0], int)):
            a = a[None]  # a sample saved without its batch axis
        if a.ndim != len(expected) or any(isinstance(d, int) and d != s for d, s in zip(expected, a.shape)):
            raise DataError(Problem(
                f"sample {label}: input '{info.name}' has shape {list(a.shape)}, the model expects {expected}",
                hint="fix the data, or set inputs.<name>.shape in the policy if the model's dims are dynamic"))
        a = _fit_dtype(a, info, label)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            kind = "NaN" if np.isnan(a).any() else "Inf"
            raise DataError(Problem(f"sample {label}: input '{info.name}' contains {bad} {kind} value(s)",
                                    hint="remove or repair this sample"))
        out[info.name] = a
    return out


def _fit_dtype(a: np.ndarray, info: InputInfo, label: str) -> np.ndarray:
    want = np.dtype(info.dtype)
    if a.dtype == want:
        return a
    if a.dtype.kind == want.kind == "f":
        return a.astype(want)
    if a.dtype.kind in "iub" and want.kind in "iu":
        cast = a.astype(want)
        if np.array_equal(cast, a):
            return cast
    raise DataError(Problem(f"sample {label}: input '{info.name}' has dtype {a.dtype}, the model expects {want}",
                            hint=f"save the data as {want}"))
