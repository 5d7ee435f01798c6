"""Data readers: every layout, and a clear message naming the file for every problem."""

import numpy as np
import pytest
from PIL import Image

from qcheck.data.readers import open_data
from qcheck.errors import DataError
from qcheck.model.prepare import InputInfo
from qcheck.policy.spec import DataSource, Preprocess

ONE_INPUT = [InputInfo("x", [1, 3, 4, 4], "float32")]
TWO_INPUTS = [InputInfo("a", [1, 2], "float32"), InputInfo("b", [1, 3], "int64")]


def test_npy_folder_in_natural_order_with_limit(tmp_path):
    for i in (0, 1, 2, 10):
        np.save(tmp_path / f"{i}.npy", np.full((1, 3, 4, 4), i, np.float32))
    data = open_data(DataSource(tmp_path, limit=3), ONE_INPUT, Preprocess())
    assert data.format == "npy" and len(data) == 3
    assert [float(s["x"][0, 0, 0, 0]) for s in data] == [0.0, 1.0, 2.0]


def test_sample_without_batch_axis_gets_one(tmp_path):
    np.save(tmp_path / "0.npy", np.zeros((3, 4, 4), np.float32))
    data = open_data(DataSource(tmp_path), ONE_INPUT, Preprocess())
    assert data[0]["x"].shape == (1, 3, 4, 4)


def test_folder_per_input(tmp_path):
    for i in range(3):
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "b").mkdir(exist_ok=True)
        np.save(tmp_path / "a" / f"{i}.npy", np.full((1, 2), i, np.float32))
        np.save(tmp_path / "b" / f"{i}.npy", np.full((1, 3), i, np.int64))
    data = open_data(DataSource(tmp_path), TWO_INPUTS, Preprocess())
    assert data.format == "npy-per-input" and len(data) == 3
    assert data[2]["b"].dtype == np.int64 and int(data[2]["b"][0, 0]) == 2


def test_folder_per_input_with_different_counts_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "a" / "0.npy", np.zeros((1, 2), np.float32))
    np.save(tmp_path / "a" / "1.npy", np.zeros((1, 2), np.float32))
    np.save(tmp_path / "b" / "0.npy", np.zeros((1, 3), np.int64))
    with pytest.raises(DataError, match=r"different numbers of samples \(a: 2, b: 1\)"):
        open_data(DataSource(tmp_path), TWO_INPUTS, Preprocess())


def test_npz_folder_and_stacked_npz_file(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    for i in range(2):
        np.savez(folder / f"{i}.npz", a=np.full((1, 2), i, np.float32), b=np.full((1, 3), i, np.int64))
    assert len(open_data(DataSource(folder), TWO_INPUTS, Preprocess())) == 2
    stacked = tmp_path / "all.npz"
    np.savez(stacked, a=np.zeros((5, 1, 2), np.float32), b=np.ones((5, 1, 3), np.int64))
    data = open_data(DataSource(stacked), TWO_INPUTS, Preprocess())
    assert len(data) == 5 and data[4]["b"].shape == (1, 3)


def test_npz_missing_key_names_the_file(tmp_path):
    np.savez(tmp_path / "0.npz", a=np.zeros((1, 2), np.float32))
    with pytest.raises(DataError) as info:
        open_data(DataSource(tmp_path), TWO_INPUTS, Preprocess())
    assert "0.npz" in str(info.value) and "input(s) b" in str(info.value)


@pytest.mark.parametrize("stacked", [False, True])
def test_npz_bomb_is_refused_from_its_header_before_decompressing(tmp_path, stacked):
    """A .npz member whose header declares 12 TiB (its data left out: only the header is read). Loading it
    would allocate the declared size; the header check refuses it first, naming the array and its size."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1, 3, 2**20, 2**20) if not stacked else (2, 3, 2**19, 2**20)})
    target = tmp_path / ("all.npz" if stacked else "f")
    if not stacked:
        target.mkdir()
    path = target if stacked else target / "0.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", header.getvalue())
    with pytest.raises(DataError) as info:
        data = open_data(DataSource(target), ONE_INPUT, Preprocess())
        data[0]
    text = str(info.value)
    assert path.name in text and "array 'x' declares shape" in text and "12288.0 GiB" in text  # 3 * 2**40 float32 values


def test_wrong_shape_names_sample_input_and_shapes(tmp_path):
    np.save(tmp_path / "0.npy", np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(DataError) as info:
        open_data(DataSource(tmp_path), ONE_INPUT, Preprocess())
    text = str(info.value)
    assert "sample 0.npy" in text and "'x'" in text and "[1, 3, 5, 5]" in text and "[1, 3, 4, 4]" in text


def test_nan_names_the_file_and_input(tmp_path):
    a = np.zeros((1, 3, 4, 4), np.float32)
    a[0, 1, 2, 3] = np.nan
    np.save(tmp_path / "0.npy", a)
    with pytest.raises(DataError, match=r"sample 0.npy: input 'x' contains 1 NaN value"):
        open_data(DataSource(tmp_path), ONE_INPUT, Preprocess())


def test_wrong_dtype_is_refused_unless_safely_castable(tmp_path):
    np.save(tmp_path / "0.npy", np.zeros((1, 3, 4, 4), np.float64))  # float64 -> float32 is fine
    assert open_data(DataSource(tmp_path), ONE_INPUT, Preprocess())[0]["x"].dtype == np.float32
    (tmp_path / "s").mkdir()
    np.save(tmp_path / "s" / "0.npy", np.array([["a", "b"]]))
    with pytest.raises(DataError, match="dtype"):
        open_data(DataSource(tmp_path / "s"), [InputInfo("x", [1, 2], "float32")], Preprocess())


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="data folder is empty"):
        open_data(DataSource(tmp_path), ONE_INPUT, Preprocess())


def test_images_are_resized_normalized_and_laid_out(tmp_path):
    # A 2x2 image with known pixels; resized to 4x4 it keeps its corner colours.
    img = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    pre = Preprocess(size=(4, 4), layout="NCHW", color="RGB", scale=1 / 255, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    x = open_data(DataSource(tmp_path), ONE_INPUT, pre)[0]["x"]
    assert x.shape == (1, 3, 4, 4)
    assert x[0, :, 0, 0].tolist() == pytest.approx([1.0, -1.0, -1.0])  # red at the top-left, in [-1, 1]
    bgr = open_data(DataSource(tmp_path), ONE_INPUT, Preprocess(size=(4, 4), color="BGR", scale=1.0))[0]["x"]
    assert bgr[0, :, 0, 0].tolist() == [0.0, 0.0, 255.0]
    nhwc = open_data(DataSource(tmp_path), [InputInfo("x", [1, 4, 4, 3], "float32")],
                     Preprocess(layout="NHWC", scale=1.0))[0]["x"]
    assert nhwc[0, 0, 0].tolist() == [255.0, 0.0, 0.0]


def _bands(path, width=60, height=30):
    """A wide image in three vertical bands: red | green | blue, 20 px each."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 3, 0] = a[:, width // 3: 2 * width // 3, 1] = a[:, 2 * width // 3:, 2] = 255
    Image.fromarray(a).save(path)


def test_short_side_resize_then_centre_crop(tmp_path):
    # 60x30 -> short side to 12: 24x12 (bands 8 px wide), centre 12 columns: 2 red, 8 green, 2 blue
    _bands(tmp_path / "a.png")
    inputs = [InputInfo("x", [1, 3, 12, 12], "float32")]
    x = open_data(DataSource(tmp_path), inputs, Preprocess(resize="short_side_crop", resize_short=12, scale=1.0))[0]["x"]
    stretched = open_data(DataSource(tmp_path), inputs, Preprocess(scale=1.0))[0]["x"]  # bands 4 px wide

    def green_columns(a):
        return int((a[0, 1, 6] > 128).sum())

    assert x.shape == (1, 3, 12, 12) and green_columns(x) == 8 and green_columns(stretched) == 4
    assert x[0, 1, :, 3:9].min() > 250 and x[0, 0, :, 3:9].max() < 5  # the centre is green, the sides are cut
    default = open_data(DataSource(tmp_path), inputs, Preprocess(resize="short_side_crop", scale=1.0))[0]["x"]
    # short side round(12 * 256/224) = 14: 28x14, bands 9.3 px wide, 12 centre columns: wider green
    assert green_columns(default) in (9, 10)


def test_letterbox_keeps_the_aspect_ratio_and_pads_centred(tmp_path):
    # 60x30 into 20x20: scaled to 20x10, rows 5..14 the image, 5 rows of padding (114) above and below
    _bands(tmp_path / "a.png")
    x = open_data(DataSource(tmp_path), [InputInfo("x", [1, 3, 20, 20], "float32")],
                  Preprocess(resize="letterbox", scale=1.0))[0]["x"]
    assert (x[0, :, :5, :] == 114).all() and (x[0, :, 15:, :] == 114).all()
    assert x[0, 0, 5:15, 0].min() == 255 and x[0, 2, 5:15, 19].min() == 255  # red left, blue right


def test_undecodable_image_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError) as info:
        open_data(DataSource(tmp_path), ONE_INPUT, Preprocess(size=(4, 4)))
    assert "broken.png" in str(info.value) and "cannot decode image" in str(info.value)


def test_images_need_a_size_when_the_model_input_is_dynamic(tmp_path):
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="data.preprocess.size"):
        open_data(DataSource(tmp_path), [InputInfo("x", [1, 3, "h", "w"], "float32")], Preprocess())


@pytest.mark.parametrize("value", ["lots", "-5", "0", "1e9"])
def test_a_malformed_image_pixel_limit_is_refused_not_replaced_by_the_default(tmp_path, monkeypatch, value):
    # A limit the user set and mistyped must not silently become 100 million pixels.
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setenv("QCHECK_MAX_IMAGE_PIXELS", value)
    with pytest.raises(DataError, match=f"QCHECK_MAX_IMAGE_PIXELS is '{value}'"):
        open_data(DataSource(tmp_path), ONE_INPUT, Preprocess(size=(4, 4)))[0]


def test_the_image_pixel_limit_applies_to_the_file(tmp_path, monkeypatch):
    # 8x8 = 64 pixels against a limit of 63 (the resize target 4x4 = 16 stays under it).
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setenv("QCHECK_MAX_IMAGE_PIXELS", "63")
    with pytest.raises(DataError, match="larger than 63 pixels"):
        open_data(DataSource(tmp_path), ONE_INPUT, Preprocess(size=(4, 4)))[0]
    monkeypatch.setenv("QCHECK_MAX_IMAGE_PIXELS", "64")
    assert open_data(DataSource(tmp_path), ONE_INPUT, Preprocess(size=(4, 4)))[0]["x"].shape == (1, 3, 4, 4)
