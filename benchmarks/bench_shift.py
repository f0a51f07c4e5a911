"""Acquisition shift: the served ensemble (with its input gate) on test-split and full-size films transformed as other scanners and conversions would leave them.

python -m benchmarks.bench_shift --n 50 --samples ../shared/data/samples-fullres --out shift.md   # docs/shift.md; all: --n 1892
python -m benchmarks.bench_shift --artifacts runs/abl299_f3 --split val --n 200 --transforms "clean,JPEG q30,noise sigma 3"
python -m benchmarks.bench_shift --readings runs/shift_all --shard 0/2 &  python -m benchmarks.bench_shift --readings runs/shift_all --shard 1/2
python -m benchmarks.bench_shift --readings runs/shift_all --kept-only   # a look at the tables so far
python -m benchmarks.bench_shift --readings runs/shift_all --samples ../shared/data/samples-fullres --out shift.md  # the tables

The whole test split takes hours: about 14 s per film (29 rows) for each of two processes on the 2-core machine, some
3.7 hours for the 1,892 films. With --readings DIR each film's readings are appended to a CSV in DIR as soon as it is
read, and a run reads only the readings DIR does not hold yet: a run that is stopped goes on where it stopped, and
--shard K/N lets N processes share the films. The tables are printed over the films read so far (by this run or by
earlier ones of the same model version), and the heading says when they are not yet all of the set. Readings are tied
to the model version, not to the code: after a change of the gate's rules, drop the readings it may change.

--artifacts may be a training run's folder (its checkpoints, without gate or calibration): the same rows for
candidate members, on validation films (--split val) so that a recipe is chosen without looking at the test split.

Each film is read as the app reads an upload (Predictor.predict): encodings (JPEG, 16-bit PNG) as file bytes,
pixel transforms as the 8-bit image a file would hold, with the sex from the labels. One row per transform
(boneage_core/acquisition.py): MAE on the films scored, its change against the clean films (on the films scored both
ways), refusals, films scored with the gate's "unusual image" warning, turns flagged, films turned back, mirrored back
and inverted back by the gate, and how far each estimate moved.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from boneage_core.artifacts import SPLIT_FILE
from boneage_core.data import attach_paths, find_dataset, read_labels, with_split
from boneage_core.gate import NotARadiographError
from boneage_core.imaging import load_gray
from boneage_core.manifest import UNVERSIONED
from boneage_core.predictor import Predictor
from boneage_core.preprocess import to_uint8
from boneage_core.acquisition import CLEAN, SHIFTS, Shift

SAMPLES_LABELS = "boneage-samples.csv"
COLUMNS = ["transform", "n", "MAE", "dMAE vs clean", "refused", "unusual", "flagged turned", "turned back",
           "mirrored back", "inverted back", "mean abs(est - clean est)"]
#: The gate's findings per film (Reading fields) counted in the table, by column.
COUNTED = {"unusual": "unusual", "flagged turned": "flagged_turned", "turned back": "turned", "mirrored back": "mirrored",
           "inverted back": "inverted"}


#: One reading per row: the film, the transform, its true age, the estimate (NaN when refused) and the gate's findings.
READING_COLUMNS = ["id", "transform", "age", "estimate", *COUNTED.values()]


@dataclass
class Reading:
    """One film under one transform: the estimate (None when refused) and what the gate said."""

    estimate: float | None
    unusual: bool = False
    flagged_turned: bool = False
    turned: bool = False
    mirrored: bool = False
    inverted: bool = False


def read_film(predictor: Predictor, film: np.ndarray | bytes, male: bool, name: str) -> Reading:
    """Predictor.predict on one transformed film (bytes as an upload, arrays as the 8-bit image a file holds)."""
    pixels = film if isinstance(film, bytes) else to_uint8(film)
    try:
        pred = predictor.predict(pixels, male=male, name=name)
    except NotARadiographError:
        return Reading(None)
    verdict = pred.gate
    return Reading(pred.bone_age_months, unusual=verdict is not None and verdict.unusual,
                   flagged_turned=verdict is not None and verdict.turn_flagged, turned=pred.turn != 0,
                   mirrored=pred.mirrored, inverted=pred.inverted)


def measure(predictor: Predictor, films: pd.DataFrame, what: str, shifts: dict[str, Shift] = SHIFTS,
            keep: Path | None = None, have: set[tuple[str, str]] = frozenset()) -> pd.DataFrame:
    """One row per (film, transform): id, transform, true age, estimate, gate flags. `films`: id, path, boneage, male.

    keep: a CSV that each film's rows are appended to as soon as it is read (with :func:`readings_tag`); have: the
    (id, transform) readings kept already, not read again.
    """
    rows = []
    for film in tqdm(films.itertuples(index=False), total=len(films), desc=what, unit="film"):
        gray = load_gray(film.path)
        film_rows = []
        for name, shift in shifts.items():
            if (film.id, name) in have:
                continue
            reading = read_film(predictor, Path(film.path).read_bytes() if name == CLEAN else shift(gray),
                                bool(film.male), f"{film.id} ({name})")
            film_rows.append({"id": film.id, "transform": name, "age": float(film.boneage), **vars(reading)})
        if keep is not None:
            append_readings(keep, pd.DataFrame(film_rows).assign(version=readings_tag(predictor)))
        rows += film_rows
    return pd.DataFrame(rows, columns=READING_COLUMNS)


def readings_tag(predictor: Predictor) -> str:
    """What kept readings must share to be joined: the model version (manifest hash), or for a training run's folder
    without a manifest a hash of its members' checkpoints."""
    if predictor.version != UNVERSIONED:
        return predictor.version
    members = ",".join(f"{name}={sha}" for name, sha in sorted(predictor.member_hashes.items()))
    return f"{UNVERSIONED}-{hashlib.sha256(members.encode()).hexdigest()[:12]}"


def append_readings(path: Path, rows: pd.DataFrame) -> None:
    """Append one film's rows to a CSV in a single write, the header first when the file is new; a line left without
    its newline (a run killed while writing) is ended first, so only that row is lost."""
    with open(path, "a+b") as f:
        end = f.seek(0, os.SEEK_END)
        broken = end > 0 and (f.seek(end - 1) or f.read(1)) != b"\n"
        text = ("\n" if broken else "") + rows.to_csv(index=False, header=end == 0)
        os.write(f.fileno(), text.encode("utf-8"))


def kept_readings(folder: Path, which: str, version: str) -> pd.DataFrame:
    """Every reading of one film set (`which`: test, val or samples) kept in `folder` by earlier runs of `version`
    (:func:`readings_tag`); the newest file's row wins a duplicate, rows cut short are dropped."""
    files = sorted(folder.glob(f"{which}-*.csv"), key=lambda f: f.stat().st_mtime)
    parts = [pd.read_csv(f, dtype={"id": str, "version": str}, on_bad_lines="skip") for f in files]
    if not parts:
        return pd.DataFrame(columns=READING_COLUMNS)
    kept = pd.concat(parts, ignore_index=True)
    kept = kept.dropna(subset=[c for c in [*READING_COLUMNS, "version"] if c != "estimate"])
    other = sorted(set(kept["version"].astype(str)) - {version})
    if other:
        raise SystemExit(f"{folder} holds readings of model version(s) {', '.join(other)}, not of {version}: "
                         "give --readings a new folder")
    flags = list(COUNTED.values())
    kept[flags] = kept[flags].astype(bool)
    return kept.drop_duplicates(["id", "transform"], keep="last")[READING_COLUMNS]


def unread(films: pd.DataFrame, kept: pd.DataFrame, transforms: list[str]) -> pd.DataFrame:
    """The films that lack a reading under any of `transforms`."""
    have = kept[kept["transform"].isin(transforms)].groupby("id")["transform"].nunique()
    complete = set(have[have == len(transforms)].index)
    return films[~films["id"].isin(complete)]


def shard(films: pd.DataFrame, spec: tuple[int, int] | None) -> pd.DataFrame:
    """(K, N) -> every N-th film from the K-th (0-based); None -> all of them."""
    return films if spec is None else films.iloc[spec[0]::spec[1]]


def _shard_spec(text: str) -> tuple[int, int]:
    """argparse type for --shard: 'K/N' with 0 <= K < N -> (K, N)."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes K/N, e.g. 0/2; got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"--shard K/N needs 0 <= K < N; got {text!r}")
    return k, n


def summarise(readings: pd.DataFrame) -> pd.DataFrame:
    """The table: one row per transform (see the module docstring)."""
    clean = readings[readings["transform"] == CLEAN].set_index("id")["estimate"]
    out = []
    for name, group in readings.groupby("transform", sort=False):
        group = group.set_index("id")
        scored = group["estimate"].notna()
        both = scored & clean.reindex(group.index).notna()
        error = (group["estimate"] - group["age"]).abs()
        clean_error = (clean.reindex(group.index) - group["age"]).abs()
        n = len(group)
        out.append({"transform": name, "n": n, "MAE": error[scored].mean(),
                    "dMAE vs clean": error[both].mean() - clean_error[both].mean(),
                    "refused": f"{int((~scored).sum())} ({(~scored).mean():.0%})",
                    **{column: int(group[field].sum()) for column, field in COUNTED.items()},
                    "mean abs(est - clean est)": (group["estimate"] - clean.reindex(group.index))[both].abs().mean()})
    return pd.DataFrame(out, columns=COLUMNS)


def markdown(table: pd.DataFrame) -> str:
    """A markdown table, months to 0.1."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|"]
    for row in table.itertuples(index=False):
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join("–" if c == "nan" else c for c in cells) + " |")
    return "\n".join(lines)


def split_films(artifacts: Path, data_dir: Path, n: int | None, seed: int, split: str = "test") -> pd.DataFrame:
    """One split's films (id, path, boneage, male) in a seeded random order; the first `n` of them when n is smaller
    (the films of a run stopped early, or of a shard, are a random sample of the split, not its first ids)."""
    csv, image_dir = find_dataset(data_dir)
    films = with_split(attach_paths(read_labels(csv), image_dir), pd.read_csv(artifacts / SPLIT_FILE, dtype={"id": str}))
    films = films[films["split"] == split].reset_index(drop=True)
    n = len(films) if n is None else min(n, len(films))
    return films.sample(n=n, random_state=seed).reset_index(drop=True)


def _transforms(text: str) -> dict[str, Shift]:
    """'clean,JPEG q30' -> those rows of SHIFTS (clean first, always); argparse's error names the unknown ones."""
    names = [CLEAN] + [n.strip() for n in text.split(",") if n.strip() and n.strip() != CLEAN]
    unknown = [n for n in names if n not in SHIFTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown transform(s) {unknown}; known: {', '.join(SHIFTS)}")
    return {n: SHIFTS[n] for n in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/rsna-bone-age-299"))
    parser.add_argument("--n", type=int, default=None, help="test-split films (default: all; a seeded random subset when smaller; 0: none)")
    parser.add_argument("--samples", type=Path, default=None, help=f"folder of full-size PNGs with {SAMPLES_LABELS}")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="the films of this split")
    parser.add_argument("--transforms", type=_transforms, default=SHIFTS,
                        help="comma list of transform names (default: every row); 'clean' is always measured")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    parser.add_argument("--readings", type=Path, default=None,
                        help="keep each film's readings in this folder and read only the films it does not hold yet")
    parser.add_argument("--shard", type=_shard_spec, default=None,
                        help="K/N: read only every N-th film from the K-th (processes sharing one --readings folder)")
    parser.add_argument("--kept-only", action="store_true",
                        help="read no film: the tables of the films --readings holds (a look at a run going on)")
    args = parser.parse_args(argv)
    if (args.shard is not None or args.kept_only) and args.readings is None:
        parser.error("--shard and --kept-only need --readings (the folder the readings are kept in)")
    if args.kept_only and not args.readings.is_dir():
        parser.error(f"--kept-only: no folder {args.readings}")
    torch.set_num_threads(args.threads)
    predictor = Predictor.load(args.artifacts)
    sets = {}
    if args.n != 0:
        sets[args.split] = (f"{args.split} split (299 px WebP)",
                            split_films(args.artifacts, args.data_dir, args.n, args.seed, args.split))
    if args.samples is not None:
        sets["samples"] = ("full-size samples (PNG)",
                           attach_paths(read_labels(args.samples / SAMPLES_LABELS), args.samples))
    started = datetime.now(timezone.utc)
    parts, read_here = [], 0
    for which, (what, films) in sets.items():
        readings, todo = _read_set(predictor, args, which, what, films)
        read_here += todo
        done = readings["id"].nunique()
        if done == 0:
            print(f"{what}: none of {len(films)} films read yet (in {args.readings})", flush=True)
            continue
        heading = f"{what}, n = {len(films)}" if done == len(films) else (
            f"{what}: {done} of {len(films)} films read so far (in {args.readings}; run again, or wait for the other "
            "shards, for all of them)")
        parts.append(f"### {heading}\n\n{markdown(summarise(readings))}\n")
        print(parts[-1], flush=True)
    minutes = (datetime.now(timezone.utc) - started).total_seconds() / 60
    footer = (f"{started:%Y-%m-%d %H:%M} UTC, {args.artifacts} ({', '.join(predictor.members)}), model version "
              f"{predictor.version}, {args.threads} thread(s), {read_here} film(s) read in "
              f"{minutes:.1f} min{'' if args.readings is None else f', readings kept in {args.readings}'}. "
              "MAE and changes in months.")
    print(footer)
    if args.out is not None and parts:
        args.out.write_text("\n".join(parts) + "\n" + footer + "\n", encoding="utf-8")
    return 0


def _read_set(predictor: Predictor, args: argparse.Namespace, which: str, what: str,
              films: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """This set's readings (kept ones plus those read now, of its films and transforms) and how many films were read."""
    names = list(args.transforms)
    if args.readings is None:
        return measure(predictor, films, what, args.transforms), len(films)
    args.readings.mkdir(parents=True, exist_ok=True)
    kept = kept_readings(args.readings, which, readings_tag(predictor))
    missing = unread(films, kept, names)
    todo = unread(shard(films, args.shard), kept, names).iloc[:0 if args.kept_only else None]  # stable shards
    print(f"{what}: {len(films) - len(missing)} of {len(films)} films kept in {args.readings}, "
          f"{len(todo)} to read now", flush=True)
    k, n = args.shard or (0, 1)
    keep = args.readings / f"{which}-{k}of{n}.csv"
    fresh = measure(predictor, todo, what, args.transforms, keep=keep, have=set(zip(kept["id"], kept["transform"])))
    readings = pd.concat([kept, fresh], ignore_index=True).drop_duplicates(["id", "transform"], keep="last")
    readings = readings[readings["id"].isin(films["id"]) & readings["transform"].isin(names)]
    readings = readings.sort_values("transform", key=lambda t: t.map(names.index), kind="stable")
    return readings[~readings["id"].isin(unread(films, readings, names)["id"])], len(todo)


if __name__ == "__main__":
    raise SystemExit(main())
