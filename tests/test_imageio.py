import numpy as np
import pytest
from PIL import Image

from chexgen.data.imageio import fit_square, load_gray, read_png_text, save_png
from chexgen.errors import ChexgenError


@pytest.mark.parametrize("bits", [8, 16])
def test_png_round_trip_and_text(tmp_path, bits):
    rng = np.random.default_rng(0)
    img = rng.random((20, 30)).astype(np.float32)
    p = tmp_path / "x.png"
    save_png(p, img, bits=bits, text={"chexgen:synthetic": "true"})
    back = load_gray(p)
    assert back.shape == (20, 30)
    assert np.abs(back - img).max() <= (0.5 / 255 if bits == 8 else 0.5 / 65535) + 1e-6
    assert read_png_text(p)["chexgen:synthetic"] == "true"
    with Image.open(p) as im:
        assert im.mode == ("L" if bits == 8 else "I;16")


def test_rgb_jpeg_is_gray(tmp_path):
    p = tmp_path / "x.jpg"
    Image.new("RGB", (16, 8), (200, 200, 200)).save(p, quality=95)
    arr = load_gray(p)
    assert arr.shape == (8, 16) and abs(arr.mean() - 200 / 255) < 0.02


def test_dicom_monochrome1_is_inverted():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCI.dcm")
    if path is None:
        pytest.skip("pydicom-data not installed")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    img = load_gray(path)
    assert img.shape == (ds.Rows, ds.Columns) and 0.0 <= img.min() and img.max() <= 1.0
    # In a chest PA the mediastinum / spine (center column band) is denser than the lungs,
    # so after MONOCHROME1 inversion it must be brighter than the lateral lung fields.
    h, w = img.shape
    center = img[h // 4 : 3 * h // 4, int(w * 0.45) : int(w * 0.55)].mean()
    lungs = np.concatenate(
        [img[h // 4 : 3 * h // 4, int(w * 0.2) : int(w * 0.3)], img[h // 4 : 3 * h // 4, int(w * 0.7) : int(w * 0.8)]]
    ).mean()
    assert center > lungs + 0.05


def test_fit_square_policies():
    img = np.zeros((10, 20), np.float32)
    img[:, 5:15] = 1.0
    crop = fit_square(img, 10, "crop")
    assert crop.shape == (10, 10) and crop.min() == 1.0  # the centre 10 columns are all ones
    pad = fit_square(img, 20, "pad")
    assert pad.shape == (20, 20) and pad[:5].max() == 0.0 and pad[5:15, 5:15].min() == 1.0
    with pytest.raises(ChexgenError, match="resize policy"):
        fit_square(img, 10, "stretch")


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ChexgenError, match="broken.png"):
        load_gray(bad)
    with pytest.raises(ChexgenError, match="not found"):
        load_gray(tmp_path / "nope.png")
