"""Bad-input corpus: every refusal is the project's error type with a message that says what is wrong."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pandas as pd
import pytest

import corpus
from boneage_core import imaging
from boneage_core.data import LabelError, parse_labels, read_labels
from boneage_core.errors import ImageLoadError, InputTypeError

IMAGE_CASES = {
    "corrupt_png": (ImageLoadError, "corrupt.png: the PNG file is corrupt (its header cannot be read)"),
    "truncated_png": (ImageLoadError, "cut.png: the PNG file is truncated"),
    "empty_file": (ImageLoadError, "empty.png: file is empty"),
    "text_file": (ImageLoadError, "not a readable image but a text file (it starts with 'id,boneage,male')"),
    "pdf_file": (ImageLoadError, "scan.pdf: not a readable image; accepted: PNG, JPEG, WebP, TIFF, GIF"),
    "tiny_8x8": (ImageLoadError, "8x8 px is too small to be a hand radiograph (min side 32 px"),
    "over_limit_header": (ImageLoadError, "bomb.png: 900 MP is more than the 150 MP limit (imaging.MAX_PIXELS)"),
    "huge_blank_png": (ImageLoadError, "12000x12000 px stored in 140 kB (compressed 1028:1): blank or synthetic"),
    "colour_dicom": (ImageLoadError, "colour.dcm (DICOM RGB): this looks like a colour photograph"),
    "saturated_dicom": (ImageLoadError, "(center 400.0, width 200.0) clips 88% of the pixels to white"),
    "none": (InputTypeError, "cannot read an image from NoneType"),
    "int": (InputTypeError, "cannot read an image from int 3"),
    "text_mode_file": (InputTypeError, "from hand.png: file opened in text mode; open images with mode 'rb'"),
}

ARRAY_CASES = {
    "nan_array": (ImageLoadError, "holds 64 non-finite value(s)"),
    "inf_array": (ImageLoadError, "holds 4096 non-finite value(s)"),
    "tiny_array": (ImageLoadError, "8x8 px is too small"),
    "rgb_array": (ImageLoadError, "expected a 2-D grayscale array (H, W), got shape (64, 64, 3)"),
    "out_of_range_array": (ImageLoadError, "float values must lie in [0, 1], found 255 to 255"),
    "int_array": (InputTypeError, "got dtype int64"),
    "list": (InputTypeError, "expected a numpy array, got list"),
}

CSV_CASES = {
    "header_only": "but no rows",
    "header_only_crlf": "but no rows",
    "years_not_months": "bone ages look like years, not months (all <= 20, 80% fractional",
    "sex_contradicts_male": "columns 'sex' and 'male' disagree on 2 row(s): line 3 (id '2'): 'F vs True', line 5",
    "non_numeric_age": "1 bad bone age(s): 1 not a number: line 3 (id '2'): 'ten'",
    "utf16_without_csv_header": "missing column(s) for id, bone age; found columns ['patient', 'age', 'sex']",
    "binary": "binary file, not a CSV text file",
}


def test_every_corpus_entry_has_an_expectation():
    assert set(IMAGE_CASES) == set(corpus.IMAGE_SOURCES)
    assert set(ARRAY_CASES) == set(corpus.ARRAYS)
    assert set(CSV_CASES) == set(corpus.BAD_CSVS)


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_bad_image_is_refused_clearly(case, tmp_path):
    error, fragment = IMAGE_CASES[case]
    source = corpus.IMAGE_SOURCES[case](tmp_path)
    with contextlib.closing(source) if hasattr(source, "close") else contextlib.nullcontext():
        with pytest.raises(error) as info:
            imaging.load_gray(source)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and "decompression bomb" not in message.lower()


@pytest.mark.parametrize("case", sorted(ARRAY_CASES))
def test_bad_array_is_refused_clearly(case):
    error, fragment = ARRAY_CASES[case]
    with pytest.raises(error) as info:
        imaging.check_gray_array(corpus.ARRAYS[case](), "input")
    assert str(info.value).startswith("input: ") and fragment in str(info.value)


@pytest.mark.parametrize("case", sorted(corpus.ACCEPTED_SOURCES))
def test_accepted_side_loads_without_warnings(case, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = imaging.load_gray(corpus.ACCEPTED_SOURCES[case](tmp_path))
    assert out.dtype == np.float32 and out.ndim == 2 and min(out.shape) >= imaging.MIN_SIDE
    assert 0.0 <= float(out.min()) < float(out.max()) <= 1.0


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_bad_label_file_is_refused_clearly(case, tmp_path):
    path = tmp_path / f"{case}.csv"
    path.write_bytes(corpus.BAD_CSVS[case])
    with pytest.raises(LabelError) as info:
        read_labels(path)
    message = str(info.value)
    assert message.startswith(f"{case}.csv: ") and CSV_CASES[case] in message
    assert "\x00" not in message and "\n" not in message


@pytest.mark.parametrize("case", sorted(corpus.ACCEPTED_CSVS))
def test_other_encodings_and_separators_read_like_the_comma_file(case, tmp_path):
    path = tmp_path / f"{case}.csv"
    path.write_bytes(corpus.ACCEPTED_CSVS[case])
    pd.testing.assert_frame_equal(read_labels(path), parse_labels(corpus.GOOD_CSV))
