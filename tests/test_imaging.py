"""imaging: every supported format loads as float gray in [0, 1]; everything else is refused clearly."""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import corpus
from boneage_core import imaging
from boneage_core.errors import BoneAgeError, InputTypeError
from boneage_core.imaging import DicomInfo, ImageLoadError, check_gray_array, is_dicom, load_gray, read_dicom_info


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _gradient_u8(h: int = 64, w: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 3 + yy * 2) % 256).astype(np.uint8)


# --- raster formats ---


def test_8bit_png_from_path_bytes_and_file_object(tmp_path):
    arr = _gradient_u8()
    path = tmp_path / "g.png"
    Image.fromarray(arr).save(path)
    expected = arr.astype(np.float32) / 255.0
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
        out = load_gray(source)
        assert out.dtype == np.float32 and out.shape == arr.shape
        np.testing.assert_allclose(out, expected, atol=1e-6)


def test_16bit_png_is_scaled_by_65535_not_clipped(tmp_path):
    h, w = 40, 300
    full = np.tile(np.linspace(0, 65535, w).round().astype(np.uint16), (h, 1))
    path = tmp_path / "g16.png"
    Image.fromarray(full).save(path)
    with Image.open(path) as check:  # really a 16-bit file, not silently 8-bit
        assert check.mode in ("I;16", "I;16B", "I", "I;16L")
    out = load_gray(path)
    np.testing.assert_allclose(out, full / 65535.0, atol=1e-6)
    assert 0.3 < float(np.median(out)) < 0.7, "16-bit values were clipped at 8 bits"

    # A 16-bit image that only uses the lower half keeps its absolute scale (divided by 65535, not its max).
    half = (full // 2).astype(np.uint16)
    Image.fromarray(half).save(path)
    out = load_gray(path)
    np.testing.assert_allclose(out, half / 65535.0, atol=1e-6)
    assert out.max() < 0.51


def test_rgb_radiograph_becomes_gray(tmp_path):
    gray = _gradient_u8()
    rng = np.random.default_rng(1)
    rgb = np.stack([gray] * 3, axis=2).astype(np.int16) + rng.integers(-2, 3, size=(*gray.shape, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb, "RGB").save(path)
    out = load_gray(path)
    assert out.shape == gray.shape
    # ITU-R 601 luma, computed independently
    luma = (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114) / 255.0
    np.testing.assert_allclose(out, luma, atol=2.5 / 255)


def test_rgba_is_composited_on_black(tmp_path):
    gray = _gradient_u8()
    alpha = np.full(gray.shape, 255, np.uint8)
    alpha[:, :10] = 0  # fully transparent strip
    rgba = np.dstack([gray, gray, gray, alpha])
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = load_gray(path)
    np.testing.assert_allclose(out[:, 10:], gray[:, 10:] / 255.0, atol=1.5 / 255)
    assert np.all(out[:, :10] == 0.0)


def test_colour_photo_is_refused(tmp_path):
    yy, xx = np.mgrid[0:96, 0:96]
    photo = np.stack([(xx * 2.6) % 256, (yy * 2.6) % 256, 255 - (xx * 2.6) % 256], axis=2).astype(np.uint8)
    path = tmp_path / "photo.jpg"
    Image.fromarray(photo, "RGB").save(path, quality=95)
    with pytest.raises(ImageLoadError, match="colour photograph") as info:
        load_gray(path)
    assert "photo.jpg" in str(info.value)


def test_jpeg_and_webp(tmp_path):
    gray = np.kron(_gradient_u8(32, 40), np.ones((2, 2), np.uint8))  # smooth enough for JPEG
    jpg, webp = tmp_path / "a.jpg", tmp_path / "a.webp"
    Image.fromarray(gray).save(jpg, quality=95)
    Image.fromarray(gray).save(webp, lossless=True)
    out_jpg = load_gray(jpg)
    assert out_jpg.shape == gray.shape
    assert float(np.abs(out_jpg - gray / 255.0).mean()) < 0.02
    out_webp = load_gray(webp)
    np.testing.assert_allclose(out_webp, gray / 255.0, atol=1e-6)


def test_real_rsna_webp_loads(data_299):
    path = data_299 / "boneage-training-dataset" / "1377.webp"
    out = load_gray(path)
    assert out.shape == (299, 299) and out.dtype == np.float32
    assert 0.0 <= out.min() < out.max() <= 1.0


# --- refusals ---


def test_corrupt_bytes_are_refused():
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_gray(b"\x00\x01garbage" * 100, name="junk.png")


def test_truncated_png_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    data = _png_bytes(rng.integers(0, 256, size=(200, 200), dtype=np.uint8))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"^cut.png: the PNG file is truncated \(its data ends early") as info:
        load_gray(path)
    assert "copy or upload it again" in str(info.value)


def test_empty_and_missing_and_text_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_gray(empty)
    with pytest.raises(ImageLoadError, match="No such image file"):
        load_gray(tmp_path / "nope.png")
    text = tmp_path / "notes.png"
    text.write_text("id,boneage,male\n1,100,True\n")
    with pytest.raises(ImageLoadError, match="not a readable image but a text file"):
        load_gray(text)


def test_too_small_image_is_refused(tmp_path):
    path = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((20, 100), np.uint8)).save(path)
    with pytest.raises(ImageLoadError, match="too small"):
        load_gray(path)


def test_too_many_pixels_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(_gradient_u8(100, 100)).save(path)
    monkeypatch.setattr(imaging, "MAX_PIXELS", 5_000)
    decoded = _spy_decoding(monkeypatch)
    with pytest.raises(ImageLoadError, match="limit"):
        load_gray(path)
    assert not decoded, "pixels were decoded before the size check"


def _spy_decoding(monkeypatch) -> list:
    """Record every pixel decode (ImageFile.load is what PNG/JPEG/... files run; Image.load the rest)."""
    decoded = []
    for cls in (Image.Image, ImageFile.ImageFile):
        original = cls.load
        monkeypatch.setattr(cls, "load", lambda self, original=original: decoded.append(self.size) or original(self))
    return decoded


def test_pillow_follows_our_pixel_limit():
    assert Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS >= imaging.MAX_PIXELS


@pytest.mark.parametrize("side, loads", [(70, True), (80, False), (110, False)])
def test_size_limit_messages_are_ours_and_no_pillow_warning(side, loads, monkeypatch):
    # Scaled-down model of the real limits: Pillow warns above its limit and refuses above twice that.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
    monkeypatch.setattr(imaging, "MAX_PIXELS", 5_000)
    data = _png_bytes(_gradient_u8(side, side))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if loads:
            assert load_gray(data, name="big.png").shape == (side, side)
            return
        with pytest.raises(ImageLoadError) as info:
            load_gray(data, name="big.png")
    assert str(info.value) == (f"big.png: {side * side / 1e6:g} MP is more than the 0.005 MP limit "
                               "(imaging.MAX_PIXELS); downscale it first")


def test_huge_blank_png_is_refused_from_its_header(tmp_path, monkeypatch):
    path = corpus.blank_png(tmp_path / "blank.png", 12_000, 12_000)  # 144 MP in 140 kB
    decoded = _spy_decoding(monkeypatch)
    with pytest.raises(ImageLoadError, match=r"12000x12000 px stored in 140 kB \(compressed 1028:1\)"):
        load_gray(path)
    assert not decoded, "a blank 144 MP image was decoded"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_large_images_are_checked_on_a_reduced_view(fmt, monkeypatch):
    monkeypatch.setattr(imaging, "LARGE_PIXELS", 1_000)
    monkeypatch.setattr(imaging, "MIN_BYTES_PER_PIXEL", 0.0)
    blank, hand = (np.full((256, 256), 7, np.uint8), np.kron(_gradient_u8(64, 64), np.ones((4, 4), np.uint8)))
    encoded = []
    for arr in (blank, hand):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        encoded.append(buf.getvalue())
    decoded = _spy_decoding(monkeypatch)
    with pytest.raises(ImageLoadError, match="256x256 px image is blank or nearly uniform"):
        load_gray(encoded[0], name="blank")
    if fmt == "JPEG":  # DCT-scaled draft: the blank JPEG was never decoded at full size
        assert decoded and set(decoded) == {(32, 32)}
    out = load_gray(encoded[1], name="hand")
    assert out.shape == (256, 256) and float(np.abs(out - hand / 255.0).mean()) < 0.02


def test_tiff_16bit_and_float_nan(tmp_path):
    full = np.tile(np.linspace(0, 65535, 100).round().astype(np.uint16), (40, 1))
    Image.fromarray(full).save(tmp_path / "g16.tiff")
    np.testing.assert_allclose(load_gray(tmp_path / "g16.tiff"), full / 65535.0, atol=1e-6)
    bad = np.full((40, 40), 0.5, np.float32)
    bad[3, 3] = np.nan
    Image.fromarray(bad, mode="F").save(tmp_path / "nan.tiff")
    with pytest.raises(ImageLoadError, match="nan.tiff: image holds non-finite values"):
        load_gray(tmp_path / "nan.tiff")


def test_multi_frame_gif_reads_the_first_frame(tmp_path, caplog):
    path = tmp_path / "anim.gif"
    path.write_bytes(corpus.frames("GIF"))
    with caplog.at_level(logging.WARNING, logger="boneage_core.imaging"):
        out = load_gray(path)
    np.testing.assert_allclose(out, corpus.gradient() / 255.0, atol=1e-6)
    assert "anim.gif: GIF with 2 frames, using the first" in caplog.text


def test_unsupported_format_lists_what_is_accepted(tmp_path):
    path = tmp_path / "a.ico"
    Image.fromarray(_gradient_u8(64, 64)).save(path)
    with pytest.raises(ImageLoadError) as info:
        load_gray(path)
    assert str(info.value) == f"a.ico: not a readable image; accepted: {imaging.ACCEPTED}"


# --- arrays ---


def test_check_gray_array_scales_and_validates():
    u8 = _gradient_u8()
    np.testing.assert_allclose(check_gray_array(u8), u8 / 255.0, atol=1e-7)
    u16 = u8.astype(np.uint16) * 257
    np.testing.assert_allclose(check_gray_array(u16[..., None]), u16 / 65535.0, atol=1e-7)
    f32 = u8.astype(np.float32) / 255
    assert check_gray_array(f32) is f32  # valid float32 is passed through, not copied
    assert check_gray_array(f32.astype(np.float64)).dtype == np.float32
    with pytest.raises(ImageLoadError, match=r"^x: 31x64 px is too small"):
        check_gray_array(np.zeros((64, 31)), "x")
    with pytest.raises(InputTypeError, match="got dtype bool"):
        check_gray_array(np.zeros((64, 64), bool))


def test_load_gray_ends_with_the_array_check(monkeypatch):
    seen = []
    original = imaging.check_gray_array
    monkeypatch.setattr(imaging, "check_gray_array", lambda arr, name="array": seen.append(name) or original(arr, name))
    load_gray(_png_bytes(_gradient_u8()), name="a.png")
    assert seen == ["a.png"]


def test_error_types():
    assert issubclass(ImageLoadError, ValueError) and issubclass(ImageLoadError, BoneAgeError)
    assert issubclass(InputTypeError, TypeError) and issubclass(InputTypeError, BoneAgeError)
    assert imaging.ImageLoadError is ImageLoadError


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_header_is_refused():
    # A tiny file that claims 30000 x 30000 px (900 MP).
    with pytest.raises(ImageLoadError) as info:
        load_gray(_png_header_only(30_000, 30_000), name="bomb.png")
    assert str(info.value).startswith("bomb.png: 900 MP is more than the 150 MP limit (imaging.MAX_PIXELS)")
    assert "decompression bomb" not in str(info.value)


def test_oversized_file_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    assert path.stat().st_size > 1000
    monkeypatch.setattr(imaging, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ImageLoadError, match="limit"):
        load_gray(path)
    with pytest.raises(ImageLoadError, match="limit"):
        load_gray(path.read_bytes())


# --- DICOM ---


def _write_dicom(path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2", signed: bool = False,
                 **tags) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientName = "Test^Hand"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _dicom_pixels() -> np.ndarray:
    h, w = 48, 200
    return np.tile(np.linspace(0, 4000, w).round().astype(np.uint16), (h, 1))


def test_dicom_monochrome2_with_rescale_and_window(tmp_path):
    raw = _dicom_pixels()
    slope, intercept, center, width = 2.0, -1000.0, 3000.0, 4001.0
    path = _write_dicom(tmp_path / "m2.dcm", raw, RescaleSlope=slope, RescaleIntercept=intercept,
                        WindowCenter=center, WindowWidth=width)
    assert is_dicom(path.read_bytes())
    out = load_gray(path)
    assert out.shape == raw.shape and out.dtype == np.float32
    # Independent: modality LUT, then the DICOM linear window (PS3.3 C.11.2.1.2), then min-max.
    x = raw * slope + intercept  # -1000 .. 7000, wider than the window on both sides
    y = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    expected = (y - y.min()) / (y.max() - y.min())
    np.testing.assert_allclose(out, expected, atol=2e-3)
    assert (out == 0).any() and (out == 1).any()  # clipped by the window at both ends


def test_dicom_without_window_uses_full_range(tmp_path):
    raw = _dicom_pixels()
    out = load_gray(_write_dicom(tmp_path / "nowin.dcm", raw))
    np.testing.assert_allclose(out, raw / raw.max(), atol=1e-5)


def test_signed_dicom(tmp_path):
    raw = np.tile(np.linspace(-1000, 3000, 120).round().astype(np.int16), (40, 1))
    out = load_gray(_write_dicom(tmp_path / "signed.dcm", raw, signed=True, RescaleSlope=1.0,
                                 RescaleIntercept=0.0))
    np.testing.assert_allclose(out, (raw + 1000.0) / 4000.0, atol=1e-5)


def test_dicom_monochrome1_is_inverted(tmp_path):
    raw = _dicom_pixels()
    tags = dict(RescaleSlope=2.0, RescaleIntercept=-1000.0, WindowCenter=3000.0, WindowWidth=4001.0)
    m2 = load_gray(_write_dicom(tmp_path / "m2.dcm", raw, "MONOCHROME2", **tags))
    m1 = load_gray(_write_dicom(tmp_path / "m1.dcm", raw, "MONOCHROME1", **tags))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m1[:, 0].mean() > 0.99 and m2[:, 0].mean() < 0.01  # low raw values are bright in MONOCHROME1


def test_dicom_without_pixel_data_is_refused(tmp_path):
    path = _write_dicom(tmp_path / "nopix.dcm", None, PatientSex="F")
    with pytest.raises(ImageLoadError, match="no PixelData") as info:
        load_gray(path)
    assert "nopix.dcm" in str(info.value)


def test_blank_dicom_is_refused(tmp_path):
    path = _write_dicom(tmp_path / "blank.dcm", np.full((64, 64), 100, np.uint16))
    with pytest.raises(ImageLoadError, match="blank"):
        load_gray(path)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_read_dicom_info(tmp_path):
    path = _write_dicom(tmp_path / "info.dcm", _dicom_pixels(), PatientSex="M", PatientBirthDate="20100115",
                        StudyDate="20200715")
    info = read_dicom_info(path)
    assert info == DicomInfo(male=True, birth_date=date(2010, 1, 15), study_date=date(2020, 7, 15))
    expected_months = (date(2020, 7, 15) - date(2010, 1, 15)).days / (365.25 / 12)
    assert info.chronological_age_months == pytest.approx(expected_months, abs=1e-6)
    assert 125 < info.chronological_age_months < 127

    female = read_dicom_info(_write_dicom(tmp_path / "f.dcm", _dicom_pixels(), PatientSex="F"))
    assert female.male is False and female.chronological_age_months is None

    odd = read_dicom_info(_write_dicom(tmp_path / "o.dcm", _dicom_pixels(), PatientSex="O",
                                       PatientBirthDate="notadate", StudyDate="20201340"))
    assert odd == DicomInfo(None, None, None)


def test_read_dicom_info_on_png_is_none(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_gradient_u8()).save(path)
    assert read_dicom_info(path) is None


def test_birth_after_study_gives_no_age():
    assert DicomInfo(True, date(2020, 1, 1), date(2019, 1, 1)).chronological_age_months is None


def test_colour_dicom_is_refused_and_gray_rgb_dicom_reads_as_luma(tmp_path):
    with pytest.raises(ImageLoadError, match=r"^colour.dcm \(DICOM RGB\): this looks like a colour photograph"):
        load_gray(corpus.colour_dicom(), name="colour.dcm")
    out = load_gray(corpus.gray_rgb_dicom(), name="gray.dcm")
    np.testing.assert_allclose(out, corpus.gradient() / 255.0, atol=1e-6)


def test_saturating_window_is_refused_a_sane_one_is_not():
    raw = corpus.dicom_gray()  # 0..4000 along x
    with pytest.raises(ImageLoadError, match=r"clips 88% of the pixels to white, more than 50%"):
        load_gray(corpus.dicom_bytes(raw, WindowCenter=400.0, WindowWidth=200.0), name="sat.dcm")
    # 40 % clipped (window top at 2400) is a hard window but still shows most of the hand
    out = load_gray(corpus.dicom_bytes(raw, WindowCenter=1200.0, WindowWidth=2400.0), name="ok.dcm")
    assert 0.35 < float((out >= 1.0).mean()) < 0.45
    # MONOCHROME1: the window's clipped end is black after inversion, the white share is what counts
    with pytest.raises(ImageLoadError, match="to white"):
        load_gray(corpus.dicom_bytes(raw, "MONOCHROME1", WindowCenter=3700.0, WindowWidth=200.0), name="m1.dcm")


def test_dicom_without_preamble_reads_like_with_it():
    raw = corpus.raw_dicom()
    assert raw[128:132] != b"DICM" and is_dicom(raw)
    np.testing.assert_array_equal(load_gray(raw), load_gray(corpus.dicom_bytes(corpus.dicom_gray())))
    assert read_dicom_info(corpus.dicom_bytes(corpus.dicom_gray(), preamble=False, PatientSex="F")).male is False


def test_blank_rule_matches_the_preprocessing_one():
    from boneage_core.preprocess import MIN_CONTRAST

    assert imaging.BLANK_SPREAD == MIN_CONTRAST


# --- issue 30: the same checks, fewer passes over the pixels ---


def test_colour_spread_is_the_mean_channel_range():
    from boneage_core.imaging import _colour_spread

    rng = np.random.default_rng(0)
    for rgb in (rng.random((37, 53, 3)).astype(np.float32), rng.integers(0, 256, (20, 30, 3)).astype(np.float64),
                np.repeat(rng.random((10, 10, 1)), 3, axis=2)):
        assert _colour_spread(rgb) == pytest.approx(float((rgb.max(axis=2) - rgb.min(axis=2)).mean()), rel=1e-6)
    assert _colour_spread(np.repeat(rng.random((10, 10, 1)), 3, axis=2)) == 0.0


def test_real_films_load_as_their_gray_values(fullres_dir, data_299):
    """Full-size 8-bit PNG (mode L) and 299 px WebP (decoded as RGB): the luminance / 255, as float32."""
    from PIL import Image

    for path in (fullres_dir / "1377.png", data_299 / "boneage-training-dataset" / "1377.webp"):
        gray = load_gray(path)
        with Image.open(path) as img:
            expected = np.asarray(img.convert("L"), dtype=np.float32) / np.float32(255)
        assert gray.dtype == np.float32
        np.testing.assert_allclose(gray, expected, atol=1e-7)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_counted_and_refused(bad):
    arr = np.full((40, 40), 0.5, np.float32)
    arr[3, 4] = arr[10, 10] = bad
    with pytest.raises(ImageLoadError, match=r"2 non-finite value"):
        check_gray_array(arr)


def test_every_listed_extension_is_read_and_found_in_folders(fullres_sample, dicom_from, tmp_path):
    """imaging.IMAGE_EXTENSIONS is the one list (image folders, batch folders, uploaders): a film saved under each
    ending is decoded to the same picture (DICOM windowed), and data.index_images / batch.find_images find every one."""
    from boneage_core.batch import find_images
    from boneage_core.data import index_images

    saved = Image.open(fullres_sample).convert("L").resize((96, 128))
    saved.save(tmp_path / "reference.png")
    for ext in imaging.IMAGE_EXTENSIONS:
        path = tmp_path / f"film{ext.replace('.', '_')}{ext}"
        if ext in (".dcm", ".dicom"):
            path.write_bytes(dicom_from(tmp_path / "reference.png"))
        else:
            saved.save(path, format={".jpg": "JPEG", ".tif": "TIFF"}.get(ext))
        gray = load_gray(path)
        assert gray.shape == (128, 96), ext
        assert np.corrcoef(gray.ravel(), np.asarray(saved, dtype=np.float64).ravel())[0, 1] > 0.99, ext
    (tmp_path / "notes.txt").write_text("not an image")
    names = {p.name for p in find_images(tmp_path)} - {"reference.png"}
    assert names == {f"film{ext.replace('.', '_')}{ext}" for ext in imaging.IMAGE_EXTENSIONS}
    assert len(index_images(tmp_path)) == len(imaging.IMAGE_EXTENSIONS) + 1


@pytest.mark.parametrize("quality", [20, 30, 45, 50, 75, 90, 95])
def test_jpeg_quality_is_read_off_the_quantisation_table(quality: int) -> None:
    from boneage_core.acquisition import jpeg
    from boneage_core.imaging import jpeg_quality

    film = np.random.default_rng(quality).random((96, 80)).astype(np.float32)
    assert jpeg_quality(jpeg(film, quality)) == quality


def test_jpeg_quality_is_none_for_other_files_and_only_low_quality_is_warned() -> None:
    from boneage_core.imaging import JPEG_QUALITY_WARN_BELOW, compression_warnings, jpeg_quality

    film = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    assert jpeg_quality(_png_bytes(film)) is None and jpeg_quality(b"\xff\xd8 not really a JPEG") is None
    assert compression_warnings(None) == [] and compression_warnings(JPEG_QUALITY_WARN_BELOW) == []
    (warning,) = compression_warnings(JPEG_QUALITY_WARN_BELOW - 1)
    assert f"quality about {JPEG_QUALITY_WARN_BELOW - 1}" in warning and "PNG or DICOM" in warning
