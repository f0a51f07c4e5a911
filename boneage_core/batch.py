"""Archive batch scoring: a folder tree or a CSV list of radiographs -> one resumable results CSV."""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from .errors import InputError
from .imaging import IMAGE_EXTENSIONS, read_dicom_info
from .spreadsheet import spreadsheet_safe
from .vocab import SexError, parse_sex, sex_code, sex_missing

logger = logging.getLogger(__name__)

#: File types scored when walking a folder tree (case-insensitive).
#: Columns every output row starts with; `error` is always the last column.
BASE_COLUMNS = ("id", "sex", "sex_from")
ERROR_COLUMN = "error"
#: The error written for a row without a sex: it is reported, never scored with a guessed sex.
SEX_MISSING = "sex missing"

#: predict(path, male, chronological age in months or None) -> the row's result columns.
Predict = Callable[[Path, bool, "float | None"], dict]


class BatchSetupError(InputError):
    """The batch cannot start (unreadable input, no usable sex at all, output exists without resume)."""


@dataclass(frozen=True)
class BatchRow:
    """One image to score: its id (unique in the batch), file and sex (None when unusable, with the reason)."""

    id: str
    path: Path
    male: bool | None
    sex_from: str = ""  # "csv" or "dicom" when the sex is known
    sex_error: str | None = None
    chronological_age_months: float | None = None  # from the CSV's CHRONO_COLUMN, for the read-out


@dataclass(frozen=True)
class BatchSummary:
    """What a run did; rows already in the output before a resume count in `resumed`."""

    total: int
    resumed: int
    scored: int
    failed: int
    no_sex: int
    resumed_errors: int

    @property
    def errors(self) -> int:
        return self.failed + self.no_sex + self.resumed_errors

    @property
    def ok(self) -> bool:
        return self.errors == 0


# --- sex --------------------------------------------------------------------------------------------------------


def _sex_of(value: object) -> tuple[bool | None, str | None]:
    """(male, None) for a usable value, else (None, the reason written to the error column)."""
    if sex_missing(value):
        return None, SEX_MISSING
    try:
        return parse_sex(value), None
    except SexError as exc:
        return None, str(exc)


def _dicom_sex(path: Path) -> bool | None:
    """PatientSex of a DICOM file, None when absent or unreadable (the prediction reports unreadable files)."""
    try:
        info = read_dicom_info(path, path.name)
    except (ValueError, OSError):
        return None
    return None if info is None else info.male


def _make_row(ident: str, path: Path, sex_value: object, age: float | None = None) -> BatchRow:
    male, reason = _sex_of(sex_value)
    if male is None and sex_missing(sex_value) and path.suffix.lower() == ".dcm":
        dicom_male = _dicom_sex(path)
        if dicom_male is not None:
            return BatchRow(ident, path, dicom_male, "dicom", chronological_age_months=age)
    return BatchRow(ident, path, male, "csv" if male is not None else "", reason, age)


# --- inputs -----------------------------------------------------------------------------------------------------


def _read_table(path: Path | BinaryIO, required: Sequence[str], name: str | None = None) -> pd.DataFrame:
    """A CSV as strings with stripped lower-case column names; BatchSetupError when unreadable or incomplete."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise BatchSetupError(f"cannot read {name or path}: {exc}") from exc
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if "sex" not in frame.columns and "male" in frame.columns:  # the RSNA label files: id,boneage,male
        frame = frame.rename(columns={"male": "sex"})
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise BatchSetupError(f"{name or path} needs columns {', '.join(required)}; missing {', '.join(missing)} "
                              f"(found {', '.join(frame.columns)})")
    return frame


#: Optional column of a patient table: chronological age (months) at the study, for the z-score.
CHRONO_COLUMN = "chronological_age_months"


def _ages(frame: pd.DataFrame, label: str) -> list[float | None]:
    """The CHRONO_COLUMN of a table as months (None where empty or absent); a non-numeric or negative one is refused."""
    ages = []
    for ident, age in zip(frame["id"].str.strip(), frame.get(CHRONO_COLUMN, [""] * len(frame))):
        months = pd.to_numeric(str(age).strip() or None, errors="coerce")
        if str(age).strip() and not (pd.notna(months) and months >= 0):
            raise BatchSetupError(f"{label}: {CHRONO_COLUMN} {age!r} for id {ident!r} is not a number of months >= 0")
        ages.append(None if pd.isna(months) else float(months))
    return ages


def read_sex_table(path: Path) -> dict[str, tuple[str, float | None]]:
    """The id,sex[,chronological_age_months] CSV as {id: (raw sex value, age)}; an id listed twice with different
    values is refused."""
    frame = _read_table(path, ("id", "sex"))
    table: dict[str, tuple[str, float | None]] = {}
    for ident, sex, age in zip(frame["id"].str.strip(), frame["sex"].str.strip(), _ages(frame, str(path))):
        if ident in table and table[ident] != (sex, age):
            raise BatchSetupError(f"{path}: id {ident!r} is listed twice with different values")
        table[ident] = (sex, age)
    return table


@dataclass(frozen=True)
class Patient:
    """What a patient table or a DICOM header says about one upload: sex (None with the reason) and age."""

    male: bool | None
    sex_from: str = ""  # "csv" or "dicom" when the sex is known
    sex_error: str | None = None
    chronological_age_months: float | None = None


def read_patient_table(source: Path | BinaryIO, name: str | None = None) -> dict[str, Patient]:
    """An id,sex[,chronological_age_months] CSV (path or file object) -> {id: Patient}.

    Sex values are read like the batch's; an empty age is None, a non-numeric or negative one is refused.
    """
    label = name or str(source)
    frame = _read_table(source, ("id", "sex"), label)
    table: dict[str, Patient] = {}
    for ident, sex, months in zip(frame["id"].str.strip(), frame["sex"].str.strip(), _ages(frame, label)):
        if not ident:
            raise BatchSetupError(f"{label}: a row has no id")
        male, reason = _sex_of(sex)
        patient = Patient(male, "csv" if male is not None else "", reason, months)
        if ident in table and table[ident] != patient:
            raise BatchSetupError(f"{label}: id {ident!r} is listed twice with different values")
        table[ident] = patient
    return table


def patient_for(file_name: str, table: dict[str, Patient], data: bytes | None = None) -> Patient:
    """An upload's patient data: its row of the table (by name, relative path or stem), else DICOM PatientSex."""
    key = next((k for k in _sex_keys(Path(file_name)) if k in table), None)
    patient = table.get(key) if key is not None else None
    if patient is not None and patient.male is not None:
        return patient
    if data is not None:
        try:
            info = read_dicom_info(data, file_name)
        except ValueError:  # unreadable DICOM: the prediction reports it
            info = None
        if info is not None and info.male is not None:
            age = patient.chronological_age_months if patient is not None else None
            return Patient(info.male, "dicom", None, info.chronological_age_months if age is None else age)
    return patient or Patient(None, "", "sex missing")


def find_images(root: Path) -> list[Path]:
    """Every image file under root (recursive, symlinked folders not followed), sorted by relative path."""
    if not root.is_dir():
        raise BatchSetupError(f"no such folder: {root}")
    found = [Path(folder) / name for folder, _, names in os.walk(root) for name in names
             if Path(name).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _sex_keys(relative: Path) -> tuple[str, ...]:
    """The ids a sex CSV may use for a file: relative path (with or without extension), file name, stem."""
    posix = relative.as_posix()
    return posix, posix[: -len(relative.suffix)] if relative.suffix else posix, relative.name, relative.stem


def rows_from_folder(root: Path, sex_csv: Path | None) -> list[BatchRow]:
    """One row per image under root; id = path relative to root; sex from the CSV (or DICOM PatientSex)."""
    table = read_sex_table(sex_csv) if sex_csv is not None else {}
    rows, used = [], set()
    for path in find_images(root):
        relative = path.relative_to(root)
        key = next((k for k in _sex_keys(relative) if k in table), None)
        used.add(key)
        rows.append(_make_row(relative.as_posix(), path, *table.get(key, ("", None))))
    unused = len(set(table) - used)
    if unused:
        logger.warning("%d id(s) in %s match no image under %s", unused, sex_csv, root)
    return rows


def rows_from_list(list_csv: Path) -> list[BatchRow]:
    """One row per line of an id,path,sex CSV; relative paths are read from the CSV's folder."""
    frame = _read_table(list_csv, ("id", "path"))
    sexes = frame["sex"] if "sex" in frame.columns else [""] * len(frame)
    rows = []
    for ident, raw_path, sex, age in zip(frame["id"].str.strip(), frame["path"].str.strip(), sexes,
                                         _ages(frame, str(list_csv))):
        if not ident or not raw_path:
            raise BatchSetupError(f"{list_csv}: every line needs an id and a path")
        path = Path(raw_path)
        rows.append(_make_row(ident, path if path.is_absolute() else list_csv.parent / path, sex, age))
    return rows


def check_rows(rows: Sequence[BatchRow]) -> None:
    """Refuse a batch with no images, duplicate ids or no usable sex at all."""
    if not rows:
        raise BatchSetupError("no images to score")
    ids = [row.id for row in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise BatchSetupError(f"id {dup!r} appears more than once; ids must be unique")
    if all(row.male is None for row in rows):
        reasons = sorted({row.sex_error or "" for row in rows})
        raise BatchSetupError(f"no row has a usable sex ({'; '.join(reasons)}); give a sex CSV (columns id, sex) "
                              "or a sex column in the list")


# --- scoring ----------------------------------------------------------------------------------------------------


def predictor_scorer(predictor, reference=None) -> Predict:
    """A Predict callable from a boneage_core.predictor.Predictor: assess.assess's report as a CSV row, with the
    read-out against `reference` (default: the table clinical.reference_path() finds) when the row has an age or
    its DICOM has birth and study dates."""
    from .assess import assess

    def predict(path: Path, male: bool, chronological_age_months: float | None = None) -> dict:
        report = assess(predictor, path, male, chronological_age_months=chronological_age_months, reference=reference)
        record = report.csv_row()
        for key in ("name", "sex"):  # the batch writes its own id and sex
            record.pop(key, None)
        return record

    return predict


def error_message(exc: Exception) -> str:
    """Plain text for expected failures (ValueError, OSError), 'TypeName: text' for anything else."""
    return str(exc) if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {exc}"


def _score_one(row: BatchRow, predict: Predict) -> dict[str, object]:
    base = {"id": row.id, "sex": "" if row.male is None else sex_code(row.male), "sex_from": row.sex_from}
    if row.male is None:
        return {**base, ERROR_COLUMN: row.sex_error or SEX_MISSING}
    try:
        result = predict(row.path, row.male, row.chronological_age_months)
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the batch; the message goes to the CSV
        if not isinstance(exc, (ValueError, OSError)):
            logger.exception("unexpected failure on %s", row.path)
        return {**base, ERROR_COLUMN: error_message(exc)}
    return {**result, **base, ERROR_COLUMN: ""}


# --- output -----------------------------------------------------------------------------------------------------


def _clean(value: object) -> str:
    """One CSV cell on one line (so a record is always exactly one line: resume relies on it), formula-safe."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(spreadsheet_safe(value)).replace("\r", " ").replace("\n", " ")


def _columns_of(result: dict[str, object]) -> list[str]:
    reserved = set(BASE_COLUMNS) | {ERROR_COLUMN}
    return [*BASE_COLUMNS, *(k for k in result if k not in reserved), ERROR_COLUMN]


def _write_lines(handle, columns: Sequence[str], rows: Iterable[dict[str, object]]) -> None:
    writer = csv.writer(handle, lineterminator="\n")
    for row in rows:
        writer.writerow([_clean(row.get(c)) for c in columns])


class ResultSink:
    """The output CSV: header once the first successful result fixes the columns, then one synced line per row.

    Rows that come before the header is known (errors, or a resumed file holding only errors) wait in memory;
    the header and those rows are then written to a temporary file that atomically replaces the output.
    """

    def __init__(self, path: Path, columns: list[str] | None = None, pending: list[dict[str, object]] | None = None):
        self.path = path
        self.columns = columns
        self.pending = list(pending or [])
        self._handle = open(path, "a", newline="", encoding="utf-8") if columns else None
        self._dropped: set[str] = set()

    def write(self, row: dict[str, object]) -> None:
        if self.columns is None:
            self.pending.append(row)
            if not row[ERROR_COLUMN]:
                self._start(_columns_of(row))
            return
        self._warn_dropped(row)
        _write_lines(self._handle, self.columns, [row])
        self._sync()

    def close(self) -> None:
        """Finish the file (a batch with no successful result gets the base header)."""
        if self.columns is None:
            self._start([*BASE_COLUMNS, ERROR_COLUMN])
        self._handle.close()

    def abort(self) -> None:
        """Close without writing rows still waiting for a header (they are scored again on resume)."""
        if self._handle is not None:
            self._handle.close()

    def _start(self, columns: list[str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, lineterminator="\n").writerow(columns)
            _write_lines(handle, columns, self.pending)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self.columns, self.pending = columns, []
        self._handle = open(self.path, "a", newline="", encoding="utf-8")

    def _sync(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def _warn_dropped(self, row: dict[str, object]) -> None:
        extra = set(row) - set(self.columns) - self._dropped
        if extra:
            self._dropped |= extra
            logger.warning("column(s) %s not in the output header; not written", ", ".join(sorted(extra)))


def _truncate_partial_line(path: Path) -> None:
    """Cut a half-written last line (a killed run) so that appending starts on a fresh line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a half-written last line (%d bytes) before resuming", path, len(data) - keep)
        with open(path, "r+b") as handle:
            handle.truncate(keep)


def open_for_resume(path: Path) -> tuple[ResultSink, list[dict[str, str]]]:
    """The existing output as a sink that appends, and its complete rows."""
    _truncate_partial_line(path)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        done = list(reader)
    if not columns:
        return ResultSink(path), []
    if columns[: len(BASE_COLUMNS)] != list(BASE_COLUMNS) or columns[-1] != ERROR_COLUMN:
        raise BatchSetupError(f"{path} is not a batch output (columns {', '.join(columns)}); use another --out")
    if len(columns) == len(BASE_COLUMNS) + 1:  # only errors so far: the header grows with the first result
        return ResultSink(path, pending=done), done
    return ResultSink(path, columns), done


def _progress(rows: Sequence[BatchRow], enabled: bool) -> Iterator[BatchRow]:
    return iter(tqdm(rows, total=len(rows), unit="img", desc="scoring", disable=not enabled, file=sys.stderr))


def check_output(out_csv: Path, resume: bool) -> None:
    """Never overwrite a results file silently."""
    if out_csv.exists() and not resume:
        raise BatchSetupError(f"{out_csv} already exists; use --resume to continue it or another --out")


def _prepare(rows: Sequence[BatchRow], out_csv: Path, resume: bool) -> tuple[ResultSink, list[dict[str, str]]]:
    check_rows(rows)
    check_output(out_csv, resume)
    if resume and out_csv.exists():
        sink, done = open_for_resume(out_csv)
        stray = {r["id"] for r in done} - {row.id for row in rows}
        if stray:
            logger.warning("%d id(s) in %s are not in this batch's input", len(stray), out_csv)
        logger.info("Resuming %s: %d row(s) already written", out_csv, len(done))
        return sink, done
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    return ResultSink(out_csv), []


def score_rows(rows: Sequence[BatchRow], predict: Predict, out_csv: Path, resume: bool = False,
               progress: bool = True) -> BatchSummary:
    """Score every row not yet in out_csv, appending one line per row; per-row failures go to the error column."""
    out_csv = Path(out_csv)
    sink, done = _prepare(rows, out_csv, resume)
    done_ids = {r["id"] for r in done}
    todo = [row for row in rows if row.id not in done_ids]
    counts = {"scored": 0, "failed": 0, "no_sex": 0}
    try:
        for row in _progress(todo, progress):
            record = _score_one(row, predict)
            sink.write(record)
            kind = "scored" if not record[ERROR_COLUMN] else ("no_sex" if row.male is None else "failed")
            counts[kind] += 1
    except BaseException:
        sink.abort()
        raise
    sink.close()
    ids = {row.id for row in rows}
    resumed_errors = sum(1 for r in done if r["id"] in ids and r.get(ERROR_COLUMN))
    return BatchSummary(len(rows), len(rows) - len(todo), resumed_errors=resumed_errors, **counts)


# --- command line -----------------------------------------------------------------------------------------------


def load_scorer(artifacts: Path, device: str) -> Predict:
    """The committed CNNs of an artifacts folder as a Predict callable."""
    from .predictor import Predictor

    return predictor_scorer(Predictor.load(artifacts, device))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True, help="artifacts folder (its manifest names the models)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", type=Path, help="score every image under this folder (recursive)")
    source.add_argument("--list", type=Path, help=f"CSV with columns id, path, sex (optionally {CHRONO_COLUMN})")
    parser.add_argument("--sex-csv", type=Path, help=f"with --folder: CSV with columns id, sex (optionally {CHRONO_COLUMN})")
    parser.add_argument("--out", type=Path, required=True, help="results CSV (refused if it exists, unless --resume)")
    parser.add_argument("--resume", action="store_true", help="append to --out, skipping ids already written")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _rows(args: argparse.Namespace) -> list[BatchRow]:
    if args.list is not None:
        if args.sex_csv is not None:
            raise BatchSetupError("--sex-csv goes with --folder; a --list carries its own sex column")
        return rows_from_list(args.list)
    return rows_from_folder(args.folder, args.sex_csv)


def _report(summary: BatchSummary, out: Path) -> None:
    print(f"{out}: {summary.total} rows; {summary.scored} scored, {summary.failed} failed, "
          f"{summary.no_sex} without usable sex in this run; {summary.resumed} already done "
          f"({summary.resumed_errors} with errors)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every row is scored, 1 when some failed or lacked sex, 2 when the batch cannot start."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        rows = _rows(args)
        check_rows(rows)
        check_output(args.out, args.resume)
        predict = load_scorer(args.artifacts, args.device)  # after the cheap checks: loading takes seconds
        summary = score_rows(rows, predict, args.out, args.resume, progress=not args.no_progress)
    except (BatchSetupError, OSError, RuntimeError) as exc:  # OSError: missing artifacts; RuntimeError: no GPU
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _report(summary, args.out)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
