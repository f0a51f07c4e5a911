"""RSNA data layout: label CSVs in any circulating format, image lookup, the 70/15/15 split, image caches."""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .errors import ImageLoadError, LabelError
from .imaging import IMAGE_EXTENSIONS, load_gray
from .preprocess import PREPROCESS_VERSION, PreprocessSpec, prepare
from .vocab import AGE_MAX_MONTHS, SEX_HELP, SexError, parse_sex

logger = logging.getLogger(__name__)

MAX_AGE_MONTHS = AGE_MAX_MONTHS
#: Age groups for bias analysis and split stratification: (label, lower, upper) in months.
AGE_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("0-2 y", 0.0, 24.0),
    ("2-5 y", 24.0, 60.0),
    ("5-10 y", 60.0, 120.0),
    ("10-15 y", 120.0, 180.0),
    ("15-19 y", 180.0, float("inf")),
)
SPLITS = ("train", "val", "test")

_ID_COLUMNS = {"id", "caseid", "imageid"}
_AGE_COLUMNS = {"boneage", "boneagemonths", "groundtruthboneagemonths"}
_MALE_COLUMNS = {"male"}
_SEX_COLUMNS = {"sex", "gender"}

#: Ages that all lie at or below this many "months", most of them fractional, are years typed as months.
YEARS_MAX_AGE = 20.0
#: Share of fractional ages (with every age <= YEARS_MAX_AGE) from which the column counts as years.
YEARS_MIN_FRACTIONAL = 0.5
#: Separators read besides the comma (European Excel writes ';' with decimal commas; TSV uses tabs).
_SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab"}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _find_column(columns: list[str], wanted: set[str]) -> str | None:
    for col in columns:
        if _norm(col) in wanted:
            return col
    return None


def _parse_male(values: pd.Series, column: str) -> pd.Series:
    parsed, bad = [], []
    for value in values:
        try:
            parsed.append(parse_sex(value))
        except SexError:
            bad.append(str(value))
    if bad:
        raise LabelError(f"column {column!r}: cannot read sex from values {sorted(set(bad))[:5]} (expected {SEX_HELP})")
    return pd.Series(parsed, index=values.index, dtype=bool)


def _clean_ids(values: pd.Series) -> pd.Series:
    ids = values.astype(str).str.strip()
    return ids.str.replace(r"^(\d+)\.0+$", r"\1", regex=True)


def _separator(header: str) -> str:
    """The separator of a label file, from its header line: comma, semicolon or tab (the most frequent)."""
    counts = {sep: header.count(sep) for sep in _SEPARATORS}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _read_table(text: str, source: str) -> tuple[pd.DataFrame, list[int], str]:
    """CSV text -> (raw string table, file line number of each row, separator)."""
    text = text.lstrip("\ufeff")
    if "\x00" in text:
        raise LabelError(f"{source}: holds NUL characters (UTF-16 read as UTF-8?); save it as UTF-8 CSV "
                         "or read the file with read_labels")
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not numbered:
        raise LabelError(f"{source}: label file is empty")
    sep = _separator(numbered[0][1])
    if sep != ",":
        logger.info("%s: reading %s-separated labels", source, _SEPARATORS[sep])
    header, *rows = csv.reader((line for _, line in numbered), delimiter=sep)
    ragged = [(n, len(row)) for (n, _), row in zip(numbered[1:], rows) if len(row) != len(header)]
    if ragged:
        raise LabelError(f"{source}: not a valid {_SEPARATORS[sep]}-separated file: line {ragged[0][0]} has "
                         f"{ragged[0][1]} fields, the header {len(header)} ({len(ragged)} such line(s))")
    raw = pd.DataFrame(rows, columns=header, dtype=str)
    if raw.empty:
        raise LabelError(f"{source}: label file has a header ({numbered[0][1][:60]!r}) but no rows")
    return raw, [n for n, _ in numbered[1:]], sep


def _where(lines: list[int], ids: pd.Series, mask: pd.Series, values: pd.Series | None = None) -> str:
    """'line 3 (id '7'): 300, ...' for the first five rows flagged by mask."""
    rows = np.flatnonzero(mask.to_numpy())[:5]
    parts = [f"line {lines[i]} (id {ids.iloc[i]!r})" + ("" if values is None else f": {values.iloc[i]!r}")
             for i in rows]
    return ", ".join(parts) + (", ..." if mask.sum() > 5 else "")


def _parse_ages(text: pd.Series, ids: pd.Series, lines: list[int], sep: str, source: str) -> pd.Series:
    """Bone ages in months; non-numbers, empty cells and out-of-range ages are named by line and id."""
    text = text.str.strip()
    numeric = text.str.replace(",", ".", regex=False) if sep != "," else text  # ';'-files use decimal commas
    ages = pd.to_numeric(numeric.replace("", np.nan), errors="coerce").astype(float)
    empty = text.eq("")
    checks = (
        (ages.isna() & ~empty, "not a number", text),
        (empty, "empty", None),
        (ages.notna() & ((ages < 0) | (ages > MAX_AGE_MONTHS)), f"outside 0-{MAX_AGE_MONTHS:g} months", text),
    )
    problems = [f"{int(mask.sum())} {what}: {_where(lines, ids, mask, shown)}" for mask, what, shown in checks
                if mask.any()]
    if problems:
        bad = int(sum(mask.sum() for mask, _, _ in checks))
        raise LabelError(f"{source}: {bad} bad bone age(s): " + "; ".join(problems))
    return ages


def _refuse_years(ages: pd.Series, source: str) -> None:
    """Ages typed in years (e.g. 10.5) instead of months: every age <= 20, most of them fractional."""
    fractional = float((ages % 1 != 0).mean())
    if len(ages) >= 5 and ages.max() <= YEARS_MAX_AGE and fractional >= YEARS_MIN_FRACTIONAL:
        examples = ", ".join(f"{a:g}" for a in ages.iloc[:3])
        raise LabelError(
            f"{source}: bone ages look like years, not months (all <= {YEARS_MAX_AGE:g}, {fractional:.0%} "
            f"fractional, e.g. {examples}); bone age must be in months: multiply by 12"
        )


def _parse_sex(raw: pd.DataFrame, male_col: str | None, sex_col: str | None, lines: list[int],
               ids: pd.Series, source: str) -> pd.Series:
    """The male flag from a 'male' and/or 'sex' column; both present must agree row by row."""
    male = _parse_male(raw[male_col or sex_col], male_col or sex_col)
    if male_col and sex_col:
        disagree = male != _parse_male(raw[sex_col], sex_col)
        if disagree.any():
            shown = raw[sex_col] + " vs " + raw[male_col]
            raise LabelError(
                f"{source}: columns {sex_col!r} and {male_col!r} disagree on {int(disagree.sum())} row(s): "
                f"{_where(lines, ids, disagree, shown)}; fix them or drop one of the two columns"
            )
    return male


def parse_labels(text: str, source: str = "labels") -> pd.DataFrame:
    """Parse label CSV text in any known RSNA format into columns id (str), boneage (float), male (bool).

    Comma-, semicolon- or tab-separated (from the header line; ';'-files may use decimal commas).
    """
    raw, lines, sep = _read_table(text, source)
    cols = list(raw.columns)
    id_col = _find_column(cols, _ID_COLUMNS)
    age_col = _find_column(cols, _AGE_COLUMNS)
    male_col = _find_column(cols, _MALE_COLUMNS)
    sex_col = _find_column(cols, _SEX_COLUMNS)
    missing = [n for n, c in (("id", id_col), ("bone age", age_col), ("sex", male_col or sex_col)) if c is None]
    if missing:
        raise LabelError(
            f"{source}: missing column(s) for {', '.join(missing)}; found columns {cols}. Expected one of "
            "'id,boneage,male', 'Case ID,Sex,Ground truth bone age (months)' or 'Image ID,male,Bone Age (months)'"
        )
    ids = _clean_ids(raw[id_col])
    ages = _parse_ages(raw[age_col], ids, lines, sep, source)
    table = pd.DataFrame({"id": ids, "boneage": ages, "male": _parse_sex(raw, male_col, sex_col, lines, ids, source)})
    _validate_table(table, source)
    return table.reset_index(drop=True)


def _validate_table(table: pd.DataFrame, source: str) -> None:
    empty_ids = table["id"].eq("") | table["id"].eq("nan")
    if empty_ids.any():
        raise LabelError(f"{source}: {int(empty_ids.sum())} row(s) have an empty id")
    dup = table["id"][table["id"].duplicated()]
    if len(dup):
        raise LabelError(f"{source}: {len(dup)} duplicated id(s), e.g. {list(dup[:5])}")
    _refuse_years(table["boneage"], source)


def _decode(data: bytes, source: str) -> str:
    """Label file bytes -> text: UTF-8 (BOM optional), UTF-16/32 with a BOM, or BOM-less UTF-16."""
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return _decode_as(data, encoding, source)
    head = data[:200]
    if head[1::2].count(0) > len(head) // 4 and not head[0::2].count(0):
        return _decode_as(data, "utf-16-le", source)
    if head[0::2].count(0) > len(head) // 4 and not head[1::2].count(0):
        return _decode_as(data, "utf-16-be", source)
    if 0 in head:
        raise LabelError(f"{source}: binary file, not a CSV text file")
    return data.decode("utf-8-sig", errors="replace")


def _decode_as(data: bytes, encoding: str, source: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise LabelError(f"{source}: not valid {encoding.upper()} text ({exc.reason} at byte {exc.start}); "
                         "save it as CSV UTF-8") from exc


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Read a label CSV file: UTF-8 or UTF-16 (BOM optional), CR-only line endings, ',' ';' or tab separated."""
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"label file not found: {path}")
    return parse_labels(_decode(path.read_bytes(), path.name), source=path.name)


def index_images(image_dir: str | os.PathLike) -> dict[str, Path]:
    """Map image id (file stem) to path for every supported image in a folder."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise LabelError(f"image folder not found: {image_dir}")
    found: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.setdefault(path.stem, path)
    return found


def attach_paths(labels: pd.DataFrame, image_dir: str | os.PathLike, allow_missing: bool = False) -> pd.DataFrame:
    """Add a `path` column; ids without an image are an error (or dropped with a warning)."""
    index = index_images(image_dir)
    paths = labels["id"].map(index)
    missing = labels.loc[paths.isna(), "id"].tolist()
    if missing:
        message = (
            f"{len(missing)} of {len(labels)} id(s) have no image in {image_dir} "
            f"(first: {', '.join(missing[:5])}); looked for {', '.join(IMAGE_EXTENSIONS)}"
        )
        if not allow_missing:
            raise LabelError(message)
        logger.warning(message)
    out = labels.assign(path=paths.astype(object))
    return out[out["path"].notna()].reset_index(drop=True)


def find_dataset(data_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Locate (labels CSV, image folder) in an RSNA/Kaggle-style data folder."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise LabelError(f"data folder not found: {data_dir}")
    csvs = sorted(data_dir.glob("*.csv"))
    preferred = [c for c in csvs if "train" in c.stem.lower()]
    if not csvs:
        raise LabelError(f"no label CSV in {data_dir}")
    if len(csvs) > 1 and len(preferred) != 1:
        raise LabelError(f"several label CSVs in {data_dir} ({[c.name for c in csvs]}); pass --labels")
    csv = preferred[0] if preferred else csvs[0]
    image_dir = data_dir / csv.stem
    if not image_dir.is_dir():
        dirs = [d for d in data_dir.iterdir() if d.is_dir()]
        if len(dirs) != 1:
            raise LabelError(f"cannot tell the image folder in {data_dir}; expected {image_dir.name}/")
        image_dir = dirs[0]
    nested = image_dir / image_dir.name  # the Kaggle zip nests the folder in itself
    if nested.is_dir():
        image_dir = nested
    return csv, image_dir


def age_group(age_months) -> np.ndarray:
    """Age-group label (see AGE_GROUPS) for each bone age in months."""
    age = np.asarray(age_months, dtype=np.float64)
    bounds = np.array([g[1] for g in AGE_GROUPS[1:]])
    labels = np.array([g[0] for g in AGE_GROUPS], dtype=object)
    return labels[np.searchsorted(bounds, age, side="right")]


def make_split(labels: pd.DataFrame, seed: int = 42, fractions=(0.70, 0.15, 0.15)) -> pd.DataFrame:
    """Stratified (sex x age group) train/val/test split; returns columns id, split."""
    from sklearn.model_selection import train_test_split  # here: the inference path imports this module (~0.18 GB)

    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    strata = labels["male"].map({True: "M", False: "F"}) + "|" + age_group(labels["boneage"])
    counts = strata.value_counts()
    strata = strata.where(strata.map(counts) >= 10, "rare")  # tiny strata cannot be split three ways
    if (strata == "rare").sum() == 1:  # a lone rare row cannot be stratified: join it to the largest stratum
        strata = strata.replace("rare", counts.index[0])
    ids = labels["id"].to_numpy()
    train_ids, rest_ids, _, rest_strata = train_test_split(
        ids, strata, train_size=fractions[0], random_state=seed, stratify=strata
    )
    val_share = fractions[1] / (fractions[1] + fractions[2])
    rest_counts = rest_strata.value_counts()
    rest_strata = rest_strata.where(rest_strata.map(rest_counts) >= 2, "rare")
    if rest_strata.value_counts().min() < 2:
        rest_strata = None
    val_ids, test_ids = train_test_split(rest_ids, train_size=val_share, random_state=seed, stratify=rest_strata)
    split = pd.concat(
        [pd.DataFrame({"id": part, "split": name}) for part, name in zip((train_ids, val_ids, test_ids), SPLITS)]
    )
    order = {id_: i for i, id_ in enumerate(ids)}
    return split.sort_values("id", key=lambda s: s.map(order)).reset_index(drop=True)


#: the training summary's record of the split a network was trained on (its split_fingerprint)
SPLIT_RECORD = "split_sha256"


def split_fingerprint(split: pd.DataFrame) -> str:
    """sha256 of a split's (id, split) pairs in id order: equal exactly when every image has the same part."""
    rows = split[["id", "split"]].astype(str).sort_values("id", kind="stable")
    return hashlib.sha256("\n".join(rows["id"] + "," + rows["split"]).encode()).hexdigest()


def load_or_make_split(labels: pd.DataFrame, path: str | os.PathLike, seed: int = 42) -> pd.DataFrame:
    """Reuse the split at `path` when it covers every labelled id; otherwise make and save one."""
    path = Path(path)
    if path.is_file():
        split = pd.read_csv(path, dtype={"id": str, "split": str})
        known = set(split["id"])
        missing = [i for i in labels["id"] if i not in known]
        if missing:
            raise LabelError(
                f"existing split {path} does not cover {len(missing)} labelled id(s) (first: {missing[:5]}); "
                "delete it or train into another --out folder"
            )
        logger.info("Reusing split %s", path)
        return split[split["id"].isin(set(labels["id"]))].reset_index(drop=True)
    split = make_split(labels, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    split.to_csv(path, index=False)
    logger.info("Wrote new split %s (seed %d)", path, seed)
    return split


def with_split(labels: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """Join the split column onto a label table."""
    return labels.merge(split, on="id", how="inner", validate="one_to_one")


@dataclass
class ImageArray:
    """Preprocessed images as uint8 (N, S, S), aligned with `ids`; failures listed, not fatal."""

    ids: list[str]
    images: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)

    def as_float(self, rows=None) -> np.ndarray:
        data = self.images if rows is None else self.images[rows]
        return data.astype(np.float32) / 255.0


def _load_one(args: tuple[str, str, PreprocessSpec]) -> tuple[str, np.ndarray | None, str]:
    id_, path, spec = args
    try:
        return id_, prepare(load_gray(path), spec), ""
    except ImageLoadError as exc:
        return id_, None, str(exc)


def _cache_key(ids: list[str], paths: list[str], spec: PreprocessSpec) -> str:
    digest = hashlib.sha1(f"{spec.key()}|preprocess {PREPROCESS_VERSION}".encode())
    for id_, p in zip(ids, paths):
        st = os.stat(p)
        digest.update(f"{id_}|{os.path.abspath(p)}|{st.st_size}|{int(st.st_mtime)}\n".encode())
    return digest.hexdigest()[:16]


def load_images(
    ids: list[str],
    paths: list[str],
    spec: PreprocessSpec,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> ImageArray:
    """Preprocess images through the one pipeline into a uint8 array (cached on disk when asked).

    Unreadable files are skipped with a warning and returned in `failures`.
    """
    ids = [str(i) for i in ids]
    paths = [str(p) for p in paths]
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"images-{spec.image_size}-{_cache_key(ids, paths, spec)}.npz"
        if cache_file.is_file():
            with np.load(cache_file, allow_pickle=False) as z:
                failures = [tuple(x.split("\t", 1)) for x in z["failures"].tolist()]
                logger.info("Loaded %d cached images from %s", len(z["ids"]), cache_file)
                return ImageArray(z["ids"].tolist(), z["images"], failures)  # type: ignore[arg-type]
    workers = workers or min(4, os.cpu_count() or 1)
    jobs = [(i, p, spec) for i, p in zip(ids, paths)]
    results: list[tuple[str, np.ndarray | None, str]]
    desc = f"preprocess {spec.image_size}px"
    if workers > 1 and len(jobs) > 64:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_load_one, jobs, chunksize=32), total=len(jobs), desc=desc))
    else:
        results = [_load_one(j) for j in tqdm(jobs, desc=desc, disable=len(jobs) < 64)]
    ok = [(i, a) for i, a, _ in results if a is not None]
    failures = [(i, msg) for i, a, msg in results if a is None]
    for id_, msg in failures:
        logger.warning("Skipping unreadable image %s: %s", id_, msg)
    size = spec.image_size
    images = np.stack([a for _, a in ok]) if ok else np.zeros((0, size, size), np.uint8)
    out = ImageArray([i for i, _ in ok], images, failures)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, ids=np.array(out.ids), images=images, failures=np.array([f"{i}\t{m}" for i, m in failures]))
        os.replace(tmp, cache_file)
    return out


def load_images_mmap(
    ids: list[str],
    paths: list[str],
    spec: PreprocessSpec,
    cache_dir: str | os.PathLike,
    workers: int | None = None,
) -> ImageArray:
    """load_images with its cache as an uncompressed .npy (+ .json of ids and failures), opened memory-mapped.

    Processes on one machine (torchrun ranks) then share the cache's pages through the OS instead of
    each holding a decoded copy. The map is copy-on-write ("c"): the array is writable for torch
    without a warning, and a page is copied only if a process writes to it (training never does).
    Writers use temporary names of their own and os.replace, so concurrent writers cannot clash.
    """
    ids = [str(i) for i in ids]
    paths = [str(p) for p in paths]
    stem = Path(cache_dir) / f"images-{spec.image_size}-{_cache_key(ids, paths, spec)}"
    npy, meta = stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".json")
    if not (npy.is_file() and meta.is_file()):
        fresh = load_images(ids, paths, spec, None, workers)
        npy.parent.mkdir(parents=True, exist_ok=True)
        tmp = npy.with_name(f"{npy.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, fresh.images)
        os.replace(tmp, npy)
        tmp = meta.with_name(f"{meta.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"ids": fresh.ids, "failures": fresh.failures}))
        os.replace(tmp, meta)
    info = json.loads(meta.read_text())
    logger.info("Memory-mapped %d cached images from %s", len(info["ids"]), npy)
    return ImageArray(info["ids"], np.load(npy, mmap_mode="c"), [tuple(f) for f in info["failures"]])
