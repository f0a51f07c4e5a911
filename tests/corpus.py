"""Generated bad-input corpus (images, arrays, sources, label CSVs): made at test time, nothing downloaded."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

# --- images ---


def gradient(h: int = 64, w: int = 80) -> np.ndarray:
    """A smooth uint8 gradient: a stand-in for a gray radiograph."""
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 3 + yy * 2) % 256).astype(np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height 8-bit gray pixels and holds none (a decompression-bomb header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def blank_png(path: Path, width: int, height: int, value: int = 0) -> Path:
    """A constant 8-bit gray PNG written row by row (never holds the whole image in memory)."""
    row = b"\x00" + bytes([value]) * width  # filter byte 0 + pixels
    packer = zlib.compressobj(9)
    with open(path, "wb") as out:
        out.write(png_header_only(width, height)[:-12])  # signature + IHDR, without IEND
        body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
        out.write(_chunk(b"IDAT", body) + _chunk(b"IEND", b""))
    return path


def corrupt_png() -> bytes:
    """A PNG whose header chunk is damaged (CRC no longer matches)."""
    data = bytearray(png_bytes(gradient()))
    data[20:24] = b"\xff\xff\xff\xff"
    return bytes(data)


def truncated_png() -> bytes:
    """A PNG of noise cut in the middle of its image data (an interrupted copy)."""
    data = png_bytes(np.random.default_rng(0).integers(0, 256, size=(200, 200), dtype=np.uint8))
    return data[: len(data) // 2]


def png16() -> bytes:
    """A 16-bit gray PNG (accepted, scaled by 65535)."""
    return png_bytes((gradient().astype(np.uint16) * 257))


def frames(fmt: str) -> bytes:
    """A two-frame GIF or TIFF (accepted: the first frame is read)."""
    first, second = Image.fromarray(gradient()), Image.fromarray(255 - gradient())
    buf = io.BytesIO()
    first.save(buf, format=fmt, save_all=True, append_images=[second])
    return buf.getvalue()


def dicom_bytes(pixels: np.ndarray, photometric: str = "MONOCHROME2", preamble: bool = True, **tags) -> bytes:
    """A DICOM CR image of uint16 gray (H, W) or uint8 RGB (H, W, 3) pixels with extra tags."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("corpus.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CR"
    ds.Rows, ds.Columns = pixels.shape[:2]
    colour = pixels.ndim == 3
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else photometric
    bits = 8 if colour else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if colour:
        ds.PlanarConfiguration = 0
    ds.PixelData = pixels.astype(np.uint8 if colour else "<u2").tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:  # a raw dataset as some scripts and old PACS exports write it: no preamble, no file meta
        ds.preamble, ds.file_meta = None, FileMetaDataset()
        ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=False)
    return buf.getvalue()


def dicom_gray() -> np.ndarray:
    return np.tile(np.linspace(0, 4000, 200).round().astype(np.uint16), (48, 1))


def colour_dicom() -> bytes:
    yy, xx = np.mgrid[0:96, 0:96]
    photo = np.stack([(xx * 2.6) % 256, (yy * 2.6) % 256, 255 - (xx * 2.6) % 256], axis=2)
    return dicom_bytes(photo.astype(np.uint8))


def gray_rgb_dicom() -> bytes:
    """A gray radiograph stored as RGB DICOM (secondary capture): accepted, like a gray RGB PNG."""
    return dicom_bytes(np.repeat(gradient()[..., None], 3, axis=2))


def saturated_dicom() -> bytes:
    """A window centred so low that 80 % of the image clips to white."""
    return dicom_bytes(dicom_gray(), WindowCenter=400.0, WindowWidth=200.0)


def raw_dicom() -> bytes:
    """A DICOM dataset without the 128-byte preamble and 'DICM' (accepted)."""
    return dicom_bytes(dicom_gray(), preamble=False)


def text_mode_file(tmp_path: Path):
    path = tmp_path / "hand.png"
    path.write_bytes(png_bytes(gradient()))
    return open(path, "r", encoding="latin-1")  # noqa: SIM115 - the caller closes it


def to_path(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


#: name -> builder(tmp_path) of an image source (path, bytes, file object or junk) for load_gray.
IMAGE_SOURCES: dict[str, Callable[[Path], object]] = {
    "corrupt_png": lambda t: to_path(t, "corrupt.png", corrupt_png()),
    "truncated_png": lambda t: to_path(t, "cut.png", truncated_png()),
    "empty_file": lambda t: to_path(t, "empty.png", b""),
    "text_file": lambda t: to_path(t, "labels.png", b"id,boneage,male\n1377,180,False\n"),
    "pdf_file": lambda t: to_path(t, "scan.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"),
    "tiny_8x8": lambda t: to_path(t, "tiny.png", png_bytes(np.zeros((8, 8), np.uint8))),
    "over_limit_header": lambda t: to_path(t, "bomb.png", png_header_only(30_000, 30_000)),
    "huge_blank_png": lambda t: blank_png(t / "blank144mp.png", 12_000, 12_000),
    "colour_dicom": lambda t: to_path(t, "colour.dcm", colour_dicom()),
    "saturated_dicom": lambda t: to_path(t, "saturated.dcm", saturated_dicom()),
    "none": lambda t: None,
    "int": lambda t: 3,
    "text_mode_file": text_mode_file,
}

#: name -> builder(tmp_path) of an input that must load (the accepted side of the same decisions).
ACCEPTED_SOURCES: dict[str, Callable[[Path], object]] = {
    "png16": lambda t: to_path(t, "g16.png", png16()),
    "multi_frame_gif": lambda t: to_path(t, "anim.gif", frames("GIF")),
    "multi_page_tiff": lambda t: to_path(t, "pages.tiff", frames("TIFF")),
    "raw_dicom_no_preamble": lambda t: to_path(t, "raw.dcm", raw_dicom()),
    "gray_rgb_dicom": lambda t: to_path(t, "rgbgray.dcm", gray_rgb_dicom()),
}

#: name -> array given directly (e.g. to Predictor.predict) for check_gray_array.
ARRAYS: dict[str, Callable[[], object]] = {
    "nan_array": lambda: np.where(np.eye(64, dtype=bool), np.nan, 0.5).astype(np.float32),
    "inf_array": lambda: np.full((64, 64), np.inf),
    "tiny_array": lambda: np.full((8, 8), 0.5, np.float32),
    "rgb_array": lambda: np.zeros((64, 64, 3), np.float32),
    "out_of_range_array": lambda: np.full((64, 64), 255.0),
    "int_array": lambda: np.zeros((64, 64), np.int64),
    "list": lambda: [[0.5] * 64] * 64,
}

# --- label CSVs ---

GOOD_CSV = "id,boneage,male\n1377,180,False\n1378,12.5,True\n1379,94,True\n"

#: name -> label file bytes that must be refused.
BAD_CSVS: dict[str, bytes] = {
    "header_only": b"id,boneage,male\n",
    "header_only_crlf": b"\xef\xbb\xbfCase ID,Sex,Ground truth bone age (months)\r\n\r\n",
    "years_not_months": b"id,boneage,male\n1,10.5,True\n2,12.25,False\n3,7.5,True\n4,15.75,False\n5,9.0,True\n",
    "sex_contradicts_male": b"id,sex,male,boneage\n1,M,True,100\n2,F,True,120\n3,F,False,90\n4,M,False,30\n",
    "non_numeric_age": b"id,boneage,male\n1,100,True\n2,ten,False\n",
    "utf16_without_csv_header": "patient;age;sex\n1;100;M\n".encode("utf-16"),
    "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
}

#: name -> label file bytes that must read like GOOD_CSV.
ACCEPTED_CSVS: dict[str, bytes] = {
    "utf16_bom": GOOD_CSV.encode("utf-16"),
    "utf16le_no_bom": GOOD_CSV.encode("utf-16-le"),
    "semicolon_decimal_comma": GOOD_CSV.replace(",", ";").replace("12.5", "12,5").encode(),
    "tab": GOOD_CSV.replace(",", "\t").encode(),
}

# --- labelled folders (evaluate, train) ---


def label_rows(n: int) -> bytes:
    """A valid label CSV of n rows (ids 1..n), ages in whole months spread over 12-200, sexes alternating."""
    ages = np.linspace(12, 200, n).round() if n > 1 else np.array([100.0])
    rows = [f"{i},{age:g},{i % 2 == 0}" for i, age in enumerate(ages, start=1)]
    return ("id,boneage,male\n" + "\n".join(rows) + "\n").encode()


def labelled_folder(root: Path, labels: bytes, images: dict[str, bytes]) -> tuple[Path, Path]:
    """An RSNA-layout data folder, root/labels.csv + root/labels/<file name>; returns (label CSV, image folder)."""
    image_dir = root / "labels"
    image_dir.mkdir(parents=True)
    for name, data in images.items():
        (image_dir / name).write_bytes(data)
    csv_path = root / "labels.csv"
    csv_path.write_bytes(labels)
    return csv_path, image_dir


def gradient_images(n: int) -> dict[str, bytes]:
    """n readable gray PNGs named 1.png .. n.png (matching label_rows(n))."""
    return {f"{i}.png": png_bytes(gradient()) for i in range(1, n + 1)}


#: Three labelled images none of which can be read (matching label_rows(3)).
UNREADABLE_IMAGES: dict[str, bytes] = {
    "1.png": corrupt_png(),
    "2.png": truncated_png(),
    "3.png": b"id,boneage,male\n1377,180,False\n",
}
