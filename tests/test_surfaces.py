"""Issue 12 on every surface (predict CLI, Predictor API, evaluate CLI, train CLI): no traceback, no silent overwrite.

Each case gives a clear one-line message; CLIs exit 2 for setup / data errors and 1 for per-file failures; the API
raises a typed boneage_core.errors exception; the artifacts folder used is byte-identical afterwards.
(batch CLI: an existing output without --resume is covered by
tests/test_batch.py::test_existing_output_without_resume_is_refused_and_left_alone.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import corpus
from boneage_core import evaluate, predict, train_cli
from boneage_core.errors import ImageLoadError, InputError, InputTypeError, MissingArtifactError
from boneage_core.predictor import Predictor
from boneage_core.vocab import SEX_HELP, SexError

REPO = Path(__file__).resolve().parents[1]


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def staged_leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp-*")]


def run_cli(main, argv: list[str], capsys, caplog) -> tuple[int, str, str]:
    """(exit code, stdout, stderr + log records) of a CLI main run in-process; argparse exits count as codes."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err + caplog.text


def assert_clean_refusal(code: int, expected_code: int, out: str, err: str, fragment: str) -> None:
    assert code == expected_code, (out, err)
    assert fragment in out + err, (out, err)
    assert "Traceback" not in out + err


@pytest.fixture(scope="module")
def real_image(data_299: Path) -> bytes:
    """One real 299 px radiograph (the input gate accepts it)."""
    return (data_299 / "boneage-training-dataset" / "1377.webp").read_bytes()


# --- predict CLI ---

PREDICT_CASES = {
    # name: (argv after --artifacts, exit code, message fragment)
    "unknown_sex": (["--sex", "X", "{good}"], 2, f"argument --sex: sex not understood: 'X'; give {SEX_HELP}"),
    "missing_file": (["--sex", "F", "{good}", "{tmp}/missing.png"], 1, "missing.png  error: No such image file"),
    "text_file": (["--sex", "F", "{good}", "{text}"], 1,
                  "labels.png  error: labels.png: not a readable image but a text file"),
    "corrupt_png": (["--sex", "F", "{good}", "{corrupt}"], 1,
                    "corrupt.png  error: corrupt.png: the PNG file is corrupt"),
}


@pytest.mark.parametrize("case", sorted(PREDICT_CASES))
def test_predict_cli(case, quick_run, real_image, tmp_path, capsys, caplog):
    argv, expected_code, fragment = PREDICT_CASES[case]
    paths = {"tmp": tmp_path, "good": corpus.to_path(tmp_path, "good.webp", real_image),
             "text": corpus.IMAGE_SOURCES["text_file"](tmp_path), "corrupt": corpus.IMAGE_SOURCES["corrupt_png"](tmp_path)}
    before = digest(quick_run)
    code, out, err = run_cli(predict.main, ["--artifacts", str(quick_run)] + [a.format(**paths) for a in argv],
                             capsys, caplog)
    assert_clean_refusal(code, expected_code, out, err, fragment)
    if expected_code == 1:  # the good file is still scored
        assert out.startswith("good.webp  sex=F  bone_age=")
    assert digest(quick_run) == before


# --- Predictor API ---

API_CASES = {
    # name: (source builder(tmp_path, real image bytes), male, exception type, message fragment)
    "sex_none": (lambda t, img: img, None, SexError, f"sex missing: give {SEX_HELP}"),
    "sex_x": (lambda t, img: img, "x", SexError, "sex not understood: 'x'"),
    "nan_array": (lambda t, img: corpus.ARRAYS["nan_array"](), True, InputError, "array: image holds 64 non-finite value(s)"),
    "tiny_8x8_array": (lambda t, img: corpus.ARRAYS["tiny_array"](), True, InputError, "8x8 px is too small"),
    "3d_array": (lambda t, img: corpus.ARRAYS["rgb_array"](), True, InputError,
                 "expected a 2-D grayscale array (H, W), got shape (64, 64, 3)"),
    "none": (lambda t, img: None, True, InputTypeError, "cannot read an image from NoneType"),
    "int": (lambda t, img: 3, True, InputTypeError, "cannot read an image from int 3"),
    "text_mode_file": (lambda t, img: corpus.text_mode_file(t), True, InputTypeError,
                       "file opened in text mode; open images with mode 'rb'"),
    "text_bytes": (lambda t, img: b"id,boneage,male\n1377,180,False\n", True, ImageLoadError,
                   "not a readable image but a text file"),
}


@pytest.fixture(scope="module")
def predictor(quick_run) -> Predictor:
    return Predictor.load(quick_run)


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_predictor_api(case, predictor, quick_run, real_image, tmp_path):
    build, male, error, fragment = API_CASES[case]
    before = digest(quick_run)
    source = build(tmp_path, real_image)
    with contextlib.closing(source) if hasattr(source, "close") else contextlib.nullcontext():
        with pytest.raises(error) as info:
            predictor.predict(source, male)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert digest(quick_run) == before


def test_predictor_reads_sex_words_and_refuses_a_missing_folder(predictor, real_image, tmp_path):
    as_word = predictor.predict(real_image, "F")
    as_bool = predictor.predict(real_image, False)
    assert as_word.male is False and as_word.bone_age_months == as_bool.bone_age_months
    with pytest.raises(MissingArtifactError, match="no trained CNN in .*nope; run train.py first") as info:
        Predictor.load(tmp_path / "nope")
    assert isinstance(info.value, FileNotFoundError)


# --- evaluate CLI ---

REAL = {"1.webp": None}  # one real radiograph (filled in by the test)

EVALUATE_CASES = {
    # name: (label CSV, images, artifacts: quick | empty | changed, extra argv, exit code, message fragment)
    "header_only_csv": (corpus.BAD_CSVS["header_only"], REAL, "quick", [], 2,
                        "labels.csv: label file has a header ('id,boneage,male') but no rows"),
    "every_image_unreadable": (corpus.label_rows(3), corpus.UNREADABLE_IMAGES, "quick", [], 2,
                               "none of the 3 labelled image(s) could be read"),
    "out_folder_missing": (corpus.label_rows(1), REAL, "quick", ["--out", "{tmp}/nope/m.json"], 2,
                           "cannot write --out {tmp}/nope/m.json: folder {tmp}/nope does not exist"),
    "predictions_folder_missing": (corpus.label_rows(1), REAL, "quick", ["--predictions", "{tmp}/nope/p.csv"], 2,
                                   "cannot write --predictions {tmp}/nope/p.csv: folder {tmp}/nope does not exist"),
    "ages_in_years": (corpus.BAD_CSVS["years_not_months"], REAL, "quick", [], 2,
                      "labels.csv: bone ages look like years, not months"),
    "sex_contradicts_male": (corpus.BAD_CSVS["sex_contradicts_male"], REAL, "quick", [], 2,
                             "labels.csv: columns 'sex' and 'male' disagree on 2 row(s)"),
    "one_row": (corpus.label_rows(1), REAL, "quick", ["--out", "{tmp}/m.json"], 0,
                "WARNING: n=1: metrics are not meaningful (fewer than 20"),
    "no_models": (corpus.label_rows(1), REAL, "empty", [], 2, "no models found in {tmp}/artifacts; run train.py"),
    "changed_model": (corpus.label_rows(1), REAL, "changed", [], 2,
                      "multihead.pt: the file changed since the manifest was written"),
}


def _artifacts_for(kind: str, quick_run: Path, tmp_path: Path) -> Path:
    if kind == "quick":
        return quick_run
    folder = tmp_path / "artifacts"
    if kind == "empty":
        folder.mkdir()
    else:  # changed: a copy whose model file gained a byte after the manifest was written
        shutil.copytree(quick_run, folder)
        with open(folder / "multihead.pt", "ab") as model:
            model.write(b"\0")
    return folder


@pytest.mark.parametrize("case", sorted(EVALUATE_CASES))
def test_evaluate_cli(case, quick_run, real_image, tmp_path, capsys, caplog):
    labels, images, kind, extra, expected_code, fragment = EVALUATE_CASES[case]
    images = {name: real_image if data is None else data for name, data in images.items()}
    csv, image_dir = corpus.labelled_folder(tmp_path / "data", labels, images)
    artifacts = _artifacts_for(kind, quick_run, tmp_path)
    before = digest(artifacts)
    argv = ["--artifacts", str(artifacts), "--images", str(image_dir), "--labels", str(csv), "--bootstrap", "20",
            "--device", "cpu"] + [a.format(tmp=tmp_path) for a in extra]
    code, out, err = run_cli(evaluate.main, argv, capsys, caplog)
    assert_clean_refusal(code, expected_code, out, err, fragment.format(tmp=tmp_path))
    assert digest(artifacts) == before
    if case == "one_row":
        metrics = json.loads((tmp_path / "m.json").read_text())
        assert metrics.pop("_warnings") == ["n=1: metrics are not meaningful (fewer than 20 labelled images "
                                            "scored); evaluate on a larger labelled set"]
        assert metrics and all(entry["n"] == 1 and "head" in entry for entry in metrics.values())


# --- train CLI ---

TRAIN_CASES = {
    # name: (images in the data folder, --out (None: the --quick default, run from a folder holding artifacts/),
    #        exit code, message fragment)
    "five_images": (5, "{tmp}/artifacts", 2, "labels.csv: only 5 labelled image(s); training needs at least 30"),
    "five_images_quick_default_out": (5, None, 2, "labels.csv: only 5 labelled image(s); training needs at least 30"),
    "out_parent_is_a_file": (40, "{tmp}/file.txt/out", 2, "file.txt exists and is not a folder; choose another"),
    "out_read_only": (40, "/proc/boneage-surfaces/out", 2, "/proc/boneage-surfaces is not writable"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_cli(case, quick_run, tmp_path, capsys, caplog, monkeypatch):
    n_images, out, expected_code, fragment = TRAIN_CASES[case]
    corpus.labelled_folder(tmp_path / "data", corpus.label_rows(n_images), corpus.gradient_images(n_images))
    shutil.copytree(quick_run, tmp_path / "artifacts")  # previous artifacts that must survive
    (tmp_path / "file.txt").write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    before = digest(tmp_path)
    argv = ["--data-dir", str(tmp_path / "data"), "--quick", "--no-pretrained", "--cache-dir", str(tmp_path / "c")]
    argv += [] if out is None else ["--out", out.format(tmp=tmp_path)]
    code, stdout, err = run_cli(train_cli.main, argv, capsys, caplog)
    assert_clean_refusal(code, expected_code, stdout, err, fragment)
    assert digest(tmp_path) == before and not staged_leftovers(tmp_path)
    if out is None:  # --quick without --out aimed at runs/quick, never at ./artifacts
        assert (tmp_path / "runs").is_dir() and not (tmp_path / "runs" / "quick").exists()


def test_sigterm_during_training_cleans_up_and_keeps_previous_artifacts(quick_run, data_299, tmp_path):
    out = tmp_path / "artifacts"
    shutil.copytree(quick_run, out)
    before = digest(out)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "--data-dir", str(data_299), "--quick", "--no-pretrained",
         "--limit", "240", "--stages", "baseline", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
         "--workers", "1"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "=== stage" in line:
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.communicate(timeout=120)[1]
    finally:
        watchdog.cancel()
    log = "".join(seen) + rest
    assert any("=== stage" in line for line in seen), log
    assert proc.returncode == 143, log
    assert f"Terminated; previous artifacts in {out} are unchanged" in log and "Traceback" not in log
    assert digest(out) == before and not staged_leftovers(tmp_path)
