"""Archive batch scoring: resume after an interrupt or a torn line, sex handling, refusals, list input, bad files."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from boneage_core import batch
from boneage_core.imaging import load_gray
from boneage_core.stages import DEFAULT_SCHEME

N_IMAGES = 200
SPELLINGS = ("M", "female", "1", "F", "Male", "0", "true", "FALSE", "boy", "Girl")


class FakePredict:
    """Deterministic stand-in for the CNNs: a result derived from the decoded pixels' hash and the sex."""

    def __init__(self, interrupt_after: int | None = None, explode_on: str | None = None, watch: Path | None = None):
        self.calls: list[str] = []
        self.interrupt_after = interrupt_after
        self.explode_on = explode_on
        self.watch = watch  # output file whose lines on disk are counted at the interrupt
        self.lines_on_disk: int | None = None

    def __call__(self, path: Path, male: bool, age: float | None = None) -> dict:
        if self.interrupt_after is not None and len(self.calls) == self.interrupt_after:
            if self.watch is not None:
                self.lines_on_disk = len(self.watch.read_bytes().splitlines())
            raise KeyboardInterrupt
        self.calls.append(path.name)
        if path.name == self.explode_on:
            raise ZeroDivisionError("boom")
        digest = hashlib.sha256(load_gray(path).tobytes() + bytes([male])).hexdigest()
        age = int(digest[:6], 16) % 2280 / 10
        return {"bone_age_months": age, "interval_low": age - 9.5, "interval_high": age + 11.25,
                "stage_name": f"stage {int(digest[6], 16) % 5}", "warnings": ""}


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 36), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, Path]:
    """200 small PNGs in two sub-folders and a sex CSV keyed by stem or by relative path, in mixed spellings."""
    root = tmp_path / "archive"
    lines = ["id,sex"]
    for i in range(N_IMAGES):
        relative = f"{'ab'[i % 2]}/img_{i:03d}.png"
        _png(root / relative, i)
        lines.append(f"{relative if i % 3 else f'img_{i:03d}'},{SPELLINGS[i % len(SPELLINGS)]}")
    sex_csv = tmp_path / "sex.csv"
    sex_csv.write_text("\n".join(lines) + "\n")
    return root, sex_csv


@pytest.fixture
def fake(monkeypatch) -> FakePredict:
    """The fake scorer, wired in where the CLI would load the models."""
    scorer = FakePredict()
    monkeypatch.setattr(batch, "load_scorer", lambda artifacts, device: scorer)
    return scorer


def _run(root: Path, sex_csv: Path, out: Path, *extra: str) -> int:
    return batch.main(["--artifacts", str(out.parent), "--folder", str(root), "--sex-csv", str(sex_csv),
                       "--out", str(out), "--no-progress", *extra])


def _read(out: Path) -> pd.DataFrame:
    return pd.read_csv(out, dtype=str, keep_default_na=False)


def test_folder_walk_is_recursive_sorted_and_keyed_by_relative_path(archive):
    root, sex_csv = archive
    (root / "notes.txt").write_text("not an image")
    (root / "c").mkdir()
    (root / "c" / "UPPER.PNG").write_bytes((root / "a" / "img_000.png").read_bytes())
    rows = batch.rows_from_folder(root, sex_csv)
    ids = [r.id for r in rows]
    assert ids == sorted(ids) and len(ids) == N_IMAGES + 1
    assert ids[:2] == ["a/img_000.png", "a/img_002.png"] and ids[-1] == "c/UPPER.PNG"
    by_id = {r.id: r for r in rows}
    assert by_id["a/img_000.png"].male is True and by_id["b/img_001.png"].male is False  # stem key, path key
    assert by_id["c/UPPER.PNG"].male is None and by_id["c/UPPER.PNG"].sex_error == "sex missing"


def test_interrupted_run_resumed_is_byte_identical_to_an_uninterrupted_one(archive, tmp_path, monkeypatch):
    root, sex_csv = archive
    straight = tmp_path / "straight.csv"
    monkeypatch.setattr(batch, "load_scorer", lambda artifacts, device: FakePredict())
    assert _run(root, sex_csv, straight) == 0

    out = tmp_path / "resumed.csv"
    interrupted = FakePredict(interrupt_after=100, watch=out)
    monkeypatch.setattr(batch, "load_scorer", lambda artifacts, device: interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(root, sex_csv, out)
    assert interrupted.lines_on_disk == 1 + 100  # header and 100 rows already on disk when the run died
    assert len(out.read_bytes().splitlines()) == 1 + 100

    second = FakePredict()
    monkeypatch.setattr(batch, "load_scorer", lambda artifacts, device: second)
    assert _run(root, sex_csv, out, "--resume") == 0
    assert len(second.calls) == N_IMAGES - 100  # nothing scored twice
    assert out.read_bytes() == straight.read_bytes()
    assert len(_read(out)) == N_IMAGES


def test_resume_repairs_a_half_written_last_line(archive, tmp_path, fake):
    root, sex_csv = archive
    out = tmp_path / "out.csv"
    assert _run(root, sex_csv, out) == 0
    complete = out.read_bytes()
    lines = complete.splitlines(keepends=True)
    torn = b"".join(lines[:51]) + lines[51][:17]  # header, 50 rows, then a killed write mid-line
    out.write_bytes(torn)
    fake.calls.clear()
    assert _run(root, sex_csv, out, "--resume") == 0
    assert len(fake.calls) == N_IMAGES - 50  # the torn row is scored again
    assert out.read_bytes() == complete


def test_rows_without_sex_are_written_unscored_and_exit_1(archive, tmp_path, fake):
    root, sex_csv = archive
    table = pd.read_csv(sex_csv, dtype=str)
    table.loc[0, "sex"] = ""  # a/img_000.png, the first row: written before the header is known
    table.loc[1, "sex"] = "x"  # b/img_001.png
    table = table.drop(index=5)  # b/img_005.png: not in the CSV at all
    table.to_csv(sex_csv, index=False)
    out = tmp_path / "out.csv"
    assert _run(root, sex_csv, out) == 1
    frame = _read(out).set_index("id")
    assert list(frame.columns) == ["sex", "sex_from", "bone_age_months", "interval_low", "interval_high",
                                   "stage_name", "warnings", "error"]
    assert frame.loc["a/img_000.png", "error"] == "sex missing"
    assert frame.loc["b/img_001.png", "error"].startswith("sex not understood: 'x'")
    assert frame.loc["b/img_005.png", "error"] == "sex missing"
    unscored = frame.loc[["a/img_000.png", "b/img_001.png", "b/img_005.png"]]
    assert (unscored["bone_age_months"] == "").all() and (unscored["sex"] == "").all()
    assert len(fake.calls) == N_IMAGES - 3 and "img_000.png" not in fake.calls
    scored = frame.drop(unscored.index)
    assert (scored["error"] == "").all() and (scored["bone_age_months"] != "").all()
    spelled = {"b/img_003.png": "F", "a/img_006.png": "M", "b/img_007.png": "F", "a/img_008.png": "M",
               "b/img_009.png": "F", "a/img_010.png": "M", "b/img_015.png": "F"}  # F true FALSE boy Girl M 0
    assert {k: frame.loc[k, "sex"] for k in spelled} == spelled
    assert frame.loc["a/img_010.png", "sex_from"] == "csv"


def test_no_usable_sex_at_all_refuses_to_start(archive, tmp_path, fake, capsys):
    root, _ = archive
    empty = tmp_path / "nobody.csv"
    empty.write_text("id,sex\nsomeone_else,M\n")
    out = tmp_path / "out.csv"
    assert _run(root, empty, out) == 2
    assert "no row has a usable sex" in capsys.readouterr().err
    assert not out.exists() and not fake.calls


def test_existing_output_without_resume_is_refused_and_left_alone(archive, tmp_path, fake, capsys):
    root, sex_csv = archive
    out = tmp_path / "out.csv"
    out.write_bytes(b"precious results\n")
    assert _run(root, sex_csv, out) == 2
    assert "--resume" in capsys.readouterr().err
    assert out.read_bytes() == b"precious results\n" and not fake.calls
    with pytest.raises(batch.BatchSetupError, match="already exists"):
        batch.score_rows(batch.rows_from_folder(root, sex_csv), fake, out, resume=False, progress=False)
    assert out.read_bytes() == b"precious results\n"


def test_setup_errors_exit_2(archive, tmp_path, capsys):
    root, sex_csv = archive
    out = tmp_path / "out.csv"
    assert _run(root, sex_csv, out) == 2  # --artifacts is tmp_path: no models there
    assert "no trained CNN" in capsys.readouterr().err
    bad_list = tmp_path / "list.csv"
    bad_list.write_text("id,file\nx,a.png\n")
    assert batch.main(["--artifacts", str(tmp_path), "--list", str(bad_list), "--out", str(out)]) == 2
    assert "needs columns id, path" in capsys.readouterr().err
    assert not out.exists()


def test_list_input_with_relative_and_absolute_paths(archive, tmp_path, fake):
    root, _ = archive
    lists = tmp_path / "lists"
    lists.mkdir()
    lst = lists / "batch.csv"
    absolute = root / "b" / "img_003.png"
    lst.write_text("id,path,sex\n"
                   "first,../archive/a/img_000.png,M\n"
                   f"second,{absolute},girl\n"
                   "third,../archive/a/img_010.png,F\n")
    out = tmp_path / "out.csv"
    code = batch.main(["--artifacts", str(tmp_path), "--list", str(lst), "--out", str(out), "--no-progress"])
    assert code == 0
    frame = _read(out)
    assert list(frame["id"]) == ["first", "second", "third"] and list(frame["sex"]) == ["M", "F", "F"]
    expected = FakePredict()(absolute, False)["bone_age_months"]
    assert float(frame.loc[1, "bone_age_months"]) == expected
    assert fake.calls == ["img_000.png", "img_003.png", "img_010.png"]


def test_a_corrupt_image_fails_alone(archive, tmp_path, monkeypatch):
    root, sex_csv = archive
    (root / "a" / "img_010.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    scorer = FakePredict(explode_on="img_011.png")
    monkeypatch.setattr(batch, "load_scorer", lambda artifacts, device: scorer)
    out = tmp_path / "out.csv"
    assert _run(root, sex_csv, out) == 1
    frame = _read(out).set_index("id")
    assert "img_010.png" in frame.loc["a/img_010.png", "error"]  # ImageLoadError: plain message
    assert not frame.loc["a/img_010.png", "error"].startswith("ImageLoadError")
    assert frame.loc["b/img_011.png", "error"] == "ZeroDivisionError: boom"
    ok = frame.drop(["a/img_010.png", "b/img_011.png"])
    assert len(ok) == N_IMAGES - 2 and (ok["error"] == "").all() and (ok["bone_age_months"] != "").all()


def test_error_only_output_gets_result_columns_when_resumed(archive, tmp_path, fake):
    root, sex_csv = archive
    rows = batch.rows_from_folder(root, sex_csv)
    out = tmp_path / "out.csv"
    head = [batch.BatchRow(r.id, r.path, None, sex_error="sex missing") for r in rows[:3]]
    batch.ResultSink(out).close()  # an earlier run in which nothing succeeded: the header has no result columns
    with open(out, "a", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows([[r.id, "", "", "sex missing"] for r in head])
    summary = batch.score_rows(rows, fake, out, resume=True, progress=False)
    assert summary.resumed == 3 and summary.resumed_errors == 3 and summary.scored == N_IMAGES - 3
    frame = _read(out)
    assert list(frame.columns)[:4] == ["id", "sex", "sex_from", "bone_age_months"]
    assert list(frame["id"]) == [r.id for r in rows] and (frame["error"][:3] == "sex missing").all()


@pytest.mark.slow
def test_end_to_end_on_full_size_samples_with_the_committed_models(fullres_dir, committed_artifacts, committed_predictor,
                                                                   tmp_path):
    labels = pd.read_csv(fullres_dir / "boneage-samples.csv").head(3)
    images = [fullres_dir / f"{i}.png" for i in labels["id"]]
    assert all(p.is_file() for p in images), images
    lst = tmp_path / "list.csv"
    lst.write_text("id,path,sex\n" + "".join(
        f"{p.stem},{p},{'M' if m else 'F'}\n" for p, m in zip(images, labels["male"])))
    out = tmp_path / "out.csv"
    code = batch.main(["--artifacts", str(committed_artifacts), "--list", str(lst), "--out", str(out),
                       "--threads", "2", "--no-progress"])
    assert code == 0
    frame = pd.read_csv(out, keep_default_na=False, dtype={"model_version": str})  # "1406e5714933" is not a float
    assert len(frame) == 3 and (frame["error"] == "").all()
    probabilities = frame[[f"p_{name}" for name in DEFAULT_SCHEME.names]]
    assert np.allclose(probabilities.sum(axis=1), 1, atol=2e-3)
    assert set(frame["stage_name"]) <= set(DEFAULT_SCHEME.names)
    assert (frame["interval_low_months"] < frame["interval_high_months"]).all()
    predictor = committed_predictor
    for path, male, age in zip(images, labels["male"], frame["bone_age_months"]):
        direct = predictor.predict(path, male=bool(male))
        assert age == pytest.approx(round(direct.bone_age_months, 2))
        assert frame.loc[frame["bone_age_months"] == age, "model_version"].iloc[0] == predictor.version
        assert 0 < age < 240


def test_formula_like_cells_are_neutralised_and_numbers_stay_numbers(tmp_path, monkeypatch):
    root = tmp_path / "archive"
    _png(root / '=HYPERLINK("x").png', 1)
    _png(root / "plain.png", 2)

    ages = {}

    def predict(path: Path, male: bool, age: float | None) -> dict:
        ages[path.name] = age
        return {"bone_age_months": 100.5, "z_score": -1.5, "stage_name": "pre-puberty", "warnings": "-dark film"}

    monkeypatch.setattr(batch, "load_scorer", lambda artifacts, device: predict)
    sex_csv = tmp_path / "sex.csv"
    sex_csv.write_text('id,sex,chronological_age_months\n"=HYPERLINK(""x"")",F,120.5\nplain,M,\n')
    out = tmp_path / "results.csv"
    assert _run(root, sex_csv, out) == 0
    frame = _read(out)
    assert list(frame["id"]) == ['\'=HYPERLINK("x").png', "plain.png"]
    assert list(frame["z_score"]) == ["-1.5", "-1.5"] and list(frame["warnings"]) == ["'-dark film"] * 2
    assert pd.read_csv(out)["z_score"].dtype.kind == "f"  # a number in the file, not text
    assert ages == {'=HYPERLINK("x").png': 120.5, "plain.png": None}


@pytest.mark.slow
def test_the_cli_reads_out_z_from_an_age_column_or_dicom_dates_as_assess_does(
        committed_artifacts, committed_predictor, fullres_sample, dicom_from, gp_table, tmp_path, monkeypatch):
    from boneage_core.assess import assess

    monkeypatch.setenv("BONEAGE_GP_TABLE", str(gp_table))
    dicom = tmp_path / "hand.dcm"
    dicom.write_bytes(dicom_from(fullres_sample, PatientSex="M", PatientBirthDate="20120301", StudyDate="20240915"))
    lst = tmp_path / "list.csv"
    lst.write_text(f"id,path,sex,chronological_age_months\npng,{fullres_sample},F,150\ndcm,{dicom},,\n"
                   f"plain,{fullres_sample},F,\n")
    out = tmp_path / "out.csv"
    assert batch.main(["--artifacts", str(committed_artifacts), "--list", str(lst), "--out", str(out),
                       "--no-progress"]) == 0
    frame = pd.read_csv(out, keep_default_na=False).set_index("id")
    expected = {"png": assess(committed_predictor, fullres_sample, "F", chronological_age_months=150.0),
                "dcm": assess(committed_predictor, dicom, None)}
    for ident, report in expected.items():
        assert float(frame.loc[ident, "z_score"]) == pytest.approx(round(report.readout.z_score, 3))
        assert float(frame.loc[ident, "bone_age_months"]) == pytest.approx(round(report.bone_age_months, 2))
    assert frame.loc["dcm", "sex_from"] == "dicom" and frame.loc["plain", "z_score"] == ""
    assert frame.loc["dcm", "StudyDate"] == "20240915" and frame.loc["png", "StudyDate"] == ""
