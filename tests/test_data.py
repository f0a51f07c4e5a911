"""data: label formats, image lookup, dataset layout, the stratified 70/15/15 split, the image cache."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from boneage_core import data as data_mod
from boneage_core.data import (
    AGE_GROUPS,
    LabelError,
    age_group,
    attach_paths,
    find_dataset,
    load_images,
    load_or_make_split,
    make_split,
    parse_labels,
    read_labels,
    split_fingerprint,
    with_split,
)
from boneage_core.preprocess import PreprocessSpec


@pytest.fixture(scope="module")
def real_labels(data_299) -> pd.DataFrame:
    return read_labels(data_299 / "boneage-training-dataset.csv")


# --- label formats ---


def test_parse_kaggle_format():
    table = parse_labels("id,boneage,male\n1377,180,False\n1378,12.5,True\n")
    assert table["id"].tolist() == ["1377", "1378"]
    assert table["boneage"].tolist() == [180.0, 12.5]
    assert table["male"].tolist() == [False, True]
    assert table["male"].dtype == bool


def test_parse_test_set_format_with_bom_and_cr_line_endings(tmp_path):
    text = "\ufeffCase ID,Sex,Ground truth bone age (months)\r4360,M,168.934\r4361,F,169.652\r4362,M,73.257\r"
    expected = pd.DataFrame({"id": ["4360", "4361", "4362"], "boneage": [168.934, 169.652, 73.257],
                             "male": [True, False, True]})
    pd.testing.assert_frame_equal(parse_labels(text), expected)
    path = tmp_path / "test.csv"
    path.write_bytes(text.encode("utf-8"))  # the BOM stays in the file bytes
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    pd.testing.assert_frame_equal(read_labels(path), expected)


def test_parse_validation_format():
    text = "Image ID,male,Bone Age (months)\n1386,FALSE,30\n1392,TRUE,162\n1397,False,18.0\n"
    table = parse_labels(text)
    assert table["id"].tolist() == ["1386", "1392", "1397"]
    assert table["male"].tolist() == [False, True, False]
    assert table["boneage"].tolist() == [30.0, 162.0, 18.0]


def test_float_ids_are_cleaned():
    assert parse_labels("id,boneage,male\n1377.0,100,True\n")["id"].tolist() == ["1377"]


def test_missing_columns_name_the_found_columns():
    with pytest.raises(LabelError) as info:
        parse_labels("patient,age,sex\n1,100,M\n", source="odd.csv")
    msg = str(info.value)
    assert "odd.csv" in msg and "['patient', 'age', 'sex']" in msg
    assert "id" in msg and "bone age" in msg


def test_ages_out_of_range_or_empty_list_the_ids():
    text = "id,boneage,male\n1,100,True\n7,300,True\n8,-1,False\n9,,True\n10,abc,False\n11,240,True\n12,0,False\n"
    with pytest.raises(LabelError) as info:
        parse_labels(text)
    msg = str(info.value)
    assert "4 bad bone age(s)" in msg
    assert "1 not a number: line 6 (id '10'): 'abc'" in msg and "1 empty: line 5 (id '9')" in msg
    assert "2 outside 0-240 months: line 3 (id '7'): '300', line 4 (id '8'): '-1'" in msg
    for id_ in ("7", "8", "9", "10"):
        assert f"'{id_}'" in msg
    for ok in ("1", "11", "12"):
        assert f"'{ok}'" not in msg


def test_duplicated_ids_are_refused():
    with pytest.raises(LabelError, match=r"1 duplicated id\(s\).*'5'"):
        parse_labels("id,boneage,male\n5,10,True\n6,20,False\n5,30,True\n")


def test_bad_sex_and_empty_file():
    with pytest.raises(LabelError, match="cannot read sex"):
        parse_labels("id,boneage,male\n1,10,maybe\n")
    with pytest.raises(LabelError, match="empty"):
        parse_labels("\ufeff\r\n\r\n")
    with pytest.raises(LabelError, match="not found"):
        read_labels("/nonexistent/labels.csv")


def test_real_training_labels(real_labels):
    assert len(real_labels) == 12611
    assert real_labels["id"].is_unique
    assert real_labels["boneage"].between(0, 240).all()


# --- image lookup and layout ---


def _touch_images(folder, ids, ext=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        (folder / f"{i}{ext}").write_bytes(b"x")


def test_attach_paths_missing_ids(tmp_path, caplog):
    _touch_images(tmp_path / "img", ["1", "2"])
    (tmp_path / "img" / "3.txt").write_text("not an image")
    labels = pd.DataFrame({"id": [str(i) for i in range(1, 11)], "boneage": 100.0, "male": True})
    with pytest.raises(LabelError) as info:
        attach_paths(labels, tmp_path / "img")
    msg = str(info.value)
    assert "8 of 10 id(s)" in msg
    assert "first: 3, 4, 5, 6, 7)" in msg  # the first five missing ids, no more
    with caplog.at_level(logging.WARNING, logger="boneage_core.data"):
        kept = attach_paths(labels, tmp_path / "img", allow_missing=True)
    assert kept["id"].tolist() == ["1", "2"]
    assert [p.name for p in kept["path"]] == ["1.png", "2.png"]
    assert any("8 of 10" in r.getMessage() for r in caplog.records)


def test_attach_paths_all_found_keeps_order(tmp_path):
    _touch_images(tmp_path / "img", ["b", "a"], ".webp")
    labels = pd.DataFrame({"id": ["b", "a"], "boneage": [1.0, 2.0], "male": [True, False]})
    out = attach_paths(labels, tmp_path / "img")
    assert out["id"].tolist() == ["b", "a"] and [p.name for p in out["path"]] == ["b.webp", "a.webp"]
    with pytest.raises(LabelError, match="not found"):
        attach_paths(labels, tmp_path / "nope")


def test_find_dataset_kaggle_nested(tmp_path):
    root = tmp_path / "rsna"
    nested = root / "boneage-training-dataset" / "boneage-training-dataset"
    _touch_images(nested, ["1"])
    (root / "boneage-training-dataset.csv").write_text("id,boneage,male\n1,10,True\n")
    (root / "boneage-test-dataset.csv").write_text("Case ID,Sex\n")
    (root / "boneage-test-dataset").mkdir()
    csv, images = find_dataset(root)
    assert csv == root / "boneage-training-dataset.csv"
    assert images == nested


def test_find_dataset_real_layout(data_299):
    csv, images = find_dataset(data_299)
    assert csv.name == "boneage-training-dataset.csv" and images.name == "boneage-training-dataset"


def test_find_dataset_errors(tmp_path):
    with pytest.raises(LabelError, match="no label CSV"):
        find_dataset(tmp_path)
    (tmp_path / "a.csv").write_text("x")
    (tmp_path / "b.csv").write_text("x")
    with pytest.raises(LabelError, match="several label CSVs"):
        find_dataset(tmp_path)


# --- split ---


def test_age_group_boundaries():
    ages = [0, 23.99, 24, 59.9, 60, 120, 179.9, 180, 240]
    assert age_group(ages).tolist() == ["0-2 y", "0-2 y", "2-5 y", "2-5 y", "5-10 y", "10-15 y", "10-15 y",
                                        "15-19 y", "15-19 y"]


def test_split_sizes_and_partition(real_labels):
    split = make_split(real_labels, seed=42)
    assert split["id"].tolist() == real_labels["id"].tolist()  # one row per id, in label order
    n = len(real_labels)
    counts = split["split"].value_counts()
    for name, share in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        assert abs(counts[name] / n - share) <= 0.01, counts.to_dict()
    assert set(split["split"]) == {"train", "val", "test"}


def test_split_is_deterministic_per_seed(real_labels):
    a = make_split(real_labels, seed=42)
    b = make_split(real_labels, seed=42)
    c = make_split(real_labels, seed=7)
    pd.testing.assert_frame_equal(a, b)
    changed = (a["split"] != c["split"]).mean()
    assert changed > 0.2, changed


def test_split_is_stratified_by_sex_and_age_group(real_labels):
    joined = with_split(real_labels, make_split(real_labels, seed=42))
    joined["group"] = age_group(joined["boneage"])
    overall_male = joined["male"].mean()
    overall_groups = joined["group"].value_counts(normalize=True)
    for name, part in joined.groupby("split"):
        assert abs(part["male"].mean() - overall_male) < 0.01, name
        shares = part["group"].value_counts(normalize=True)
        for label, _, _ in AGE_GROUPS:
            assert abs(shares.get(label, 0.0) - overall_groups.get(label, 0.0)) < 0.01, (name, label)


def test_split_handles_small_tables():
    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"id": [str(i) for i in range(40)], "boneage": rng.uniform(0, 240, 40),
                           "male": rng.random(40) < 0.5})
    split = make_split(labels, seed=1)
    assert len(split) == 40 and split["id"].is_unique
    assert split["split"].value_counts()["train"] == 28
    with pytest.raises(ValueError, match="sum to 1"):
        make_split(labels, fractions=(0.5, 0.2, 0.2))


def test_split_with_a_single_rare_row():
    """One row alone in a small stratum (e.g. one girl under 2 in a --limit subset) must not crash the split."""
    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"id": [str(i) for i in range(101)],
                           "boneage": np.append(rng.uniform(70, 110, 100), 10.0),
                           "male": [True] * 100 + [False]})
    split = make_split(labels, seed=0)
    assert split["id"].tolist() == labels["id"].tolist()
    assert abs(split["split"].value_counts()["train"] - 71) <= 1


def test_load_or_make_split_reuses_and_checks_coverage(tmp_path, real_labels):
    labels = real_labels.iloc[:600].reset_index(drop=True)
    path = tmp_path / "out" / "split.csv"
    first = load_or_make_split(labels, path, seed=42)
    assert path.is_file()
    again = load_or_make_split(labels, path, seed=999)  # another seed: the saved file still wins
    pd.testing.assert_frame_equal(first, again)
    subset = load_or_make_split(labels.iloc[:100], path, seed=999)
    assert subset["id"].tolist() == labels["id"].iloc[:100].tolist()
    assert (subset["split"].to_numpy() == first["split"].iloc[:100].to_numpy()).all()
    more = real_labels.iloc[:610]
    with pytest.raises(LabelError, match="does not cover 10 labelled id"):
        load_or_make_split(more, path)


def test_split_fingerprint_follows_the_assignment_not_the_row_order(real_labels):
    split = make_split(real_labels.iloc[:600].reset_index(drop=True), seed=42)
    shuffled = split.sample(frac=1.0, random_state=0)
    assert split_fingerprint(shuffled) == split_fingerprint(split)
    moved = split.copy()
    first_train, first_test = moved.index[moved["split"] == "train"][0], moved.index[moved["split"] == "test"][0]
    moved.loc[[first_train, first_test], "split"] = ["test", "train"]  # one image each way: the same sizes
    assert split_fingerprint(moved) != split_fingerprint(split)


# --- image loading and cache ---


def test_load_images_skips_corrupt_and_reuses_cache(tmp_path, data_299, monkeypatch):
    folder = data_299 / "boneage-training-dataset"
    ids = ["1377", "1378", "1379"]
    paths = [folder / f"{i}.webp" for i in ids]
    bad = tmp_path / "bad.webp"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 garbage")
    spec = PreprocessSpec(image_size=64)
    cache = tmp_path / "cache"
    out = load_images(ids + ["bad"], paths + [bad], spec, cache_dir=cache, workers=1)
    assert out.ids == ids
    assert out.images.shape == (3, 64, 64) and out.images.dtype == np.uint8
    assert len(out.failures) == 1 and out.failures[0][0] == "bad" and "bad.webp" in out.failures[0][1]
    # images are exactly the one preprocessing path, quantised to uint8
    from boneage_core.preprocess import preprocess_source, to_uint8

    np.testing.assert_array_equal(out.images[1], to_uint8(preprocess_source(paths[1], spec)))
    np.testing.assert_allclose(out.as_float([0]), out.images[:1] / 255.0, atol=1e-7)
    assert len(list(cache.glob("*.npz"))) == 1

    def must_not_run(job):
        raise AssertionError("cache was not reused")

    monkeypatch.setattr(data_mod, "_load_one", must_not_run)
    cached = load_images(ids + ["bad"], paths + [bad], spec, cache_dir=cache, workers=1)
    assert cached.ids == ids
    np.testing.assert_array_equal(cached.images, out.images)
    assert cached.failures == out.failures


def test_cache_key_changes_with_spec_files_and_preprocessing_version(tmp_path, monkeypatch):
    img = tmp_path / "1.png"
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))).save(img)
    key = data_mod._cache_key(["1"], [str(img)], PreprocessSpec(image_size=64))
    monkeypatch.setattr(data_mod, "PREPROCESS_VERSION", data_mod.PREPROCESS_VERSION + 1)
    assert key != data_mod._cache_key(["1"], [str(img)], PreprocessSpec(image_size=64))  # the path itself changed
    monkeypatch.undo()
    assert key != data_mod._cache_key(["1"], [str(img)], PreprocessSpec(image_size=32))
    assert key != data_mod._cache_key(["2"], [str(img)], PreprocessSpec(image_size=64))
    Image.fromarray(np.zeros((70, 70), np.uint8)).save(img)  # a different size on disk
    assert key != data_mod._cache_key(["1"], [str(img)], PreprocessSpec(image_size=64))


# --- bad label files ---


def test_label_error_is_the_project_input_error():
    from boneage_core.errors import InputError
    from boneage_core.errors import LabelError as CoreLabelError

    assert LabelError is CoreLabelError and issubclass(LabelError, InputError) and issubclass(LabelError, ValueError)


@pytest.mark.parametrize("sep", [";", "\t"])
def test_semicolon_and_tab_files_are_read(sep):
    text = "Case ID{0}Sex{0}Ground truth bone age (months)\n4360{0}M{0}168,934\n4361{0}F{0}12\n".format(sep)
    if sep == "\t":
        text = text.replace("168,934", "168.934")
    table = parse_labels(text)
    assert table["id"].tolist() == ["4360", "4361"] and table["boneage"].tolist() == [168.934, 12.0]
    assert table["male"].tolist() == [True, False]


def test_decimal_comma_is_not_read_in_comma_files():
    with pytest.raises(LabelError):  # "1,12,5,True" has four fields for three columns
        parse_labels('id,boneage,male\n1,"12,5",True\n')


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"])
def test_utf16_and_utf32_files_are_decoded(tmp_path, encoding):
    path = tmp_path / "labels.csv"
    path.write_bytes("id,boneage,male\r\n1377,180,False\r\n".encode(encoding))
    assert read_labels(path).to_dict("list") == {"id": ["1377"], "boneage": [180.0], "male": [False]}


def test_nul_characters_and_broken_rows_are_named():
    with pytest.raises(LabelError, match=r"^x.csv: holds NUL characters \(UTF-16 read as UTF-8\?\)"):
        parse_labels("i\x00d\x00,\x00", source="x.csv")
    with pytest.raises(LabelError, match=r"^y.csv: not a valid comma-separated file: line 2 has 5 fields, the hea"):
        parse_labels("id,boneage,male\n1,2,True,4,5\n3,4,False\n", source="y.csv")


def test_header_only_has_no_rows():
    with pytest.raises(LabelError, match=r"^labels: label file has a header \('id,boneage,male'\) but no rows$"):
        parse_labels("id,boneage,male\n\n")


def test_years_rule_boundaries():
    years = "id,boneage,male\n" + "".join(f"{i},{a},True\n" for i, a in enumerate([10.5, 12.25, 7.5, 15.75, 9]))
    with pytest.raises(LabelError, match="multiply by 12"):
        parse_labels(years)
    parse_labels(years.replace("15.75", "25.75"))  # one age above 20: months
    parse_labels(years.replace("10.5", "10").replace("12.25", "12"))  # 2 of 5 fractional: months
    parse_labels("id,boneage,male\n1,10.5,True\n2,12.25,False\n3,7.5,True\n4,15.75,False\n")  # too few rows to tell


def test_sex_and_male_columns_must_agree():
    agree = parse_labels("id,male,sex,boneage\n1,True,M,10\n2,False,F,20\n")
    assert agree["male"].tolist() == [True, False]
    with pytest.raises(LabelError) as info:
        parse_labels("id,male,Sex,boneage\n1,True,M,10\n2,True,F,20\n", source="s.csv")
    assert str(info.value) == ("s.csv: columns 'Sex' and 'male' disagree on 1 row(s): line 3 (id '2'): 'F vs True'; "
                               "fix them or drop one of the two columns")


def test_non_numbers_are_not_called_out_of_range():
    with pytest.raises(LabelError) as info:
        parse_labels("id,boneage,male\n1,ten,True\n2,20,False\n", source="n.csv")
    assert str(info.value) == "n.csv: 1 bad bone age(s): 1 not a number: line 2 (id '1'): 'ten'"
    assert "outside" not in str(info.value)
