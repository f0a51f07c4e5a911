"""The acquisition-shift transforms of boneage_core/acquisition.py do what their names say (tiny synthetic images, no model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from boneage_core import acquisition as shift
from benchmarks.bench_shift import COLUMNS, markdown, summarise
from boneage_core.imaging import load_gray


@pytest.fixture
def film() -> np.ndarray:
    """A 60 x 40 'film': a bright vertical bar (the hand) left of centre on a dark ramp, not symmetric."""
    g = np.tile(np.linspace(0.05, 0.4, 40, dtype=np.float32), (60, 1))
    g[10:55, 8:18] = 0.9
    g[5:12, 25:35] = 0.7
    return g


@pytest.mark.parametrize("name", list(shift.SHIFTS))
def test_every_shift_gives_a_readable_gray_film(name: str, film: np.ndarray) -> None:
    out = shift.SHIFTS[name](film)
    gray = load_gray(out) if isinstance(out, bytes) else out
    assert gray.ndim == 2 and gray.dtype == np.float32
    assert 0.0 <= gray.min() and gray.max() <= 1.0
    if name == shift.CLEAN:
        np.testing.assert_array_equal(gray, film)


@pytest.mark.parametrize("name", ["gamma 0.6", "contrast x0.5", "brightness +20", "noise sigma 3", "down to 128 px and back", "rotated +10 deg",
                                  "burned-in text + marker", "inverted grey scale", "upside down (180 deg)"])
def test_pixel_shifts_keep_the_shape_and_change_the_film(name: str, film: np.ndarray) -> None:
    out = shift.SHIFTS[name](film)
    assert out.shape == film.shape
    assert not np.allclose(out, film, atol=1e-3)


def test_mirrored_inverted_and_turned_are_exact(film: np.ndarray) -> None:
    np.testing.assert_array_equal(shift.SHIFTS["mirrored (right hand)"](film), np.fliplr(film))
    np.testing.assert_array_equal(shift.SHIFTS["mirrored + noise sigma 3"](film), shift.noise(np.fliplr(film), 3))
    assert load_gray(shift.SHIFTS["mirrored + JPEG q30"](film)).shape == film.shape
    np.testing.assert_allclose(shift.SHIFTS["inverted grey scale"](film), 1.0 - film, atol=1e-7)
    np.testing.assert_array_equal(shift.SHIFTS["upside down (180 deg)"](film), film[::-1, ::-1])
    sideways = shift.SHIFTS["sideways (90 deg)"](film)
    assert sideways.shape == film.shape[::-1]
    np.testing.assert_array_equal(sideways, np.rot90(film))


def test_gamma_contrast_brightness_noise(film: np.ndarray) -> None:
    np.testing.assert_allclose(shift.gamma(film, 0.6), film ** 0.6, rtol=1e-5)
    assert shift.gamma(film, 0.6).mean() > film.mean() > shift.gamma(film, 1.6).mean()
    low = shift.contrast(film, 0.5)
    assert low.std() == pytest.approx(film.std() * 0.5, rel=1e-4) and low.mean() == pytest.approx(film.mean(), abs=1e-5)
    np.testing.assert_allclose(shift.brightness(film, -20), np.clip(film - 20 / 255, 0, 1), atol=1e-6)
    flat = np.full((200, 200), 0.5, np.float32)
    assert (shift.noise(flat, 6) - flat).std() * 255 == pytest.approx(6, rel=0.05)
    np.testing.assert_array_equal(shift.noise(flat, 6), shift.noise(flat, 6))  # pure: same seed, same noise


def test_blur_scales_with_the_image_size() -> None:
    """An edge blurred at 299 px has sigma 1.5 px; at 4 x that size, 6 px (the sigma of the edge's derivative)."""
    def edge_sigma(side: int) -> float:
        g = np.zeros((side, side), np.float32)
        g[:, side // 2:] = 1.0
        d = np.diff(shift.blur(g, 1.5)[side // 2])
        x = np.arange(d.size)
        mean = (d * x).sum() / d.sum()
        return float(np.sqrt((d * (x - mean) ** 2).sum() / d.sum()))

    assert edge_sigma(299) == pytest.approx(1.5, rel=0.05)
    assert edge_sigma(1196) == pytest.approx(6.0, rel=0.05)


def test_jpeg_and_16_bit_png_decode_to_the_film(film: np.ndarray) -> None:
    q75, q30 = load_gray(shift.jpeg(film, 75)), load_gray(shift.jpeg(film, 30))
    assert shift.jpeg(film, 75)[:3] == b"\xff\xd8\xff" and q75.shape == film.shape
    assert np.abs(q75 - film).mean() < np.abs(q30 - film).mean() < 0.1
    data = shift.png16(film)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_allclose(load_gray(data), film, atol=1 / 255)


def test_downsample_loses_detail_but_keeps_the_mean() -> None:
    stripes = np.tile(np.array([0.2, 0.8], np.float32), (256, 128))  # 1 px stripes, lost below 256 px
    out = shift.downsample(stripes, 128)
    assert out.shape == stripes.shape and out.std() < 0.1 * stripes.std()
    assert out.mean() == pytest.approx(0.5, abs=0.02)


def test_rotation_fills_black_and_turns_counter_clockwise() -> None:
    g = np.full((101, 101), 0.5, np.float32)
    g[10:50, 48:53] = 1.0  # a bar pointing up from the centre
    out = shift.rotate(g, 20)
    assert out[0, 0] == 0.0 and out[-1, -1] == 0.0 and out[50, 50] == pytest.approx(0.5, abs=0.05)
    ys, xs = np.nonzero(out > 0.9)
    assert xs[ys < 30].mean() < 50  # the top of the bar moved left: counter-clockwise


def test_padding_and_crop_change_the_frame(film: np.ndarray) -> None:
    black, white = shift.pad(film, 0.2, 0.0), shift.pad(film, 0.2, 1.0)
    assert black.shape == white.shape == (60, 56)
    assert (black[:, :8] == 0).all() and (white[:, -8:] == 1).all()
    np.testing.assert_array_equal(black[:, 8:48], film)
    cropped = shift.crop(film, 0.1)
    assert cropped.shape == (48, 32)
    np.testing.assert_array_equal(cropped, film[6:54, 4:36])


def test_burned_in_text_and_marker_are_white_in_their_corners() -> None:
    g = np.full((300, 200), 0.3, np.float32)
    out = shift.burned_in(g)
    assert (out[:40] > 0.9).sum() > 30  # text along the top (antialiased)
    assert (out[-30:, -30:] == 1.0).sum() > 100  # the square marker bottom right
    np.testing.assert_allclose(out[100:200, 50:150], 0.3, atol=1 / 255)  # the middle untouched


def test_summary_compares_each_transform_with_the_clean_films() -> None:
    readings = pd.DataFrame({
        "id": ["a", "b", "a", "b"], "transform": [shift.CLEAN, shift.CLEAN, "x", "x"], "age": [100.0, 50.0] * 2,
        "estimate": [110.0, 50.0, None, 56.0], "flagged_turned": [False, False, True, False], "unusual": [False] * 4,
        "mirrored": [False, False, False, True], "inverted": [False] * 4, "turned": [False, False, False, True]})
    table = summarise(readings).set_index("transform")
    assert list(table.reset_index().columns) == COLUMNS
    assert table.loc["x", "MAE"] == 6.0 and table.loc["x", "dMAE vs clean"] == 6.0  # b: 0 -> 6
    assert table.loc["x", "refused"] == "1 (50%)" and table.loc["x", "turned back"] == 1
    assert table.loc["x", "mirrored back"] == 1 and table.loc["x", "inverted back"] == 0
    assert table.loc["x", "mean abs(est - clean est)"] == 6.0 and table.loc[shift.CLEAN, "MAE"] == 5.0
    assert markdown(summarise(readings)).count("\n") == 3


def test_transforms_option_picks_rows_with_clean_first_and_names_unknown_ones():
    import argparse

    from benchmarks.bench_shift import _transforms

    assert list(_transforms("JPEG q30, noise sigma 3")) == [shift.CLEAN, "JPEG q30", "noise sigma 3"]
    assert list(_transforms("clean,JPEG q30")) == [shift.CLEAN, "JPEG q30"]
    with pytest.raises(argparse.ArgumentTypeError, match="JPEG q31"):
        _transforms("JPEG q31")


def _readings(ids: list[str], transforms: list[str], version: str = "v1") -> pd.DataFrame:
    return pd.DataFrame([{"id": i, "transform": t, "age": 100.0, "estimate": 101.0, "unusual": False,
                          "flagged_turned": False, "turned": False, "mirrored": False, "inverted": False,
                          "version": version} for i in ids for t in transforms])


def test_unread_films_lack_a_reading_under_some_transform_and_shards_split_the_films() -> None:
    from benchmarks.bench_shift import shard, unread

    films = pd.DataFrame({"id": list("abcdefg")})
    kept = pd.concat([_readings(["a"], [shift.CLEAN, "x"]), _readings(["b"], [shift.CLEAN])])
    assert list(unread(films, kept, [shift.CLEAN, "x"])["id"]) == list("bcdefg")
    assert list(unread(films, kept, [shift.CLEAN])["id"]) == list("cdefg")
    assert list(shard(films, (1, 3))["id"]) == ["b", "e"]
    assert list(shard(films, None)["id"]) == list("abcdefg")
    together = pd.concat([shard(films, (k, 3)) for k in range(3)])
    assert sorted(together["id"]) == list("abcdefg")


def test_shard_option_needs_k_below_n() -> None:
    import argparse

    from benchmarks.bench_shift import _shard_spec

    assert _shard_spec("1/2") == (1, 2)
    for bad in ("2/2", "a/2", "1", "-1/2"):
        with pytest.raises(argparse.ArgumentTypeError, match="K/N"):
            _shard_spec(bad)


def test_kept_readings_join_the_shards_and_refuse_another_model_version(tmp_path) -> None:
    import os

    from benchmarks.bench_shift import READING_COLUMNS, append_readings, kept_readings

    append_readings(tmp_path / "test-1of2.csv", _readings(["a", "b"], [shift.CLEAN]))
    append_readings(tmp_path / "test-0of2.csv", _readings(["b"], [shift.CLEAN]).assign(estimate=90.0))
    os.utime(tmp_path / "test-1of2.csv", (1, 1))  # older than test-0of2.csv
    append_readings(tmp_path / "samples-0of1.csv", _readings(["z"], [shift.CLEAN]))
    kept = kept_readings(tmp_path, "test", "v1")
    assert list(kept.columns) == READING_COLUMNS and sorted(kept["id"]) == ["a", "b"]
    assert kept.set_index("id").loc["b", "estimate"] == 90.0  # the newest file's row wins a duplicate
    assert kept_readings(tmp_path, "val", "v1").empty
    with pytest.raises(SystemExit, match="v1, not of v2"):
        kept_readings(tmp_path, "test", "v2")


def test_readings_survive_the_csv_and_a_run_killed_while_writing(tmp_path) -> None:
    """Numeric ids stay strings (leading zeros too), a refusal stays NaN, flags stay booleans; a row cut short by a
    killed run is dropped and the next film's rows still land."""
    from benchmarks.bench_shift import append_readings, kept_readings

    path = tmp_path / "test-0of1.csv"
    first = _readings(["0137", "4360"], [shift.CLEAN, "x"]).assign(mirrored=[True, False, False, True])
    first.loc[1, "estimate"] = np.nan
    append_readings(path, first)
    with open(path, "ab") as f:
        f.write(b"9999,clean,100.0,1")  # a run killed mid-row
    append_readings(path, _readings(["5000"], [shift.CLEAN]))
    assert path.read_text().count("id,transform") == 1
    kept = kept_readings(path.parent, "test", "v1").reset_index(drop=True)
    assert list(kept["id"]) == ["0137", "0137", "4360", "4360", "5000"]
    assert np.isnan(kept.loc[1, "estimate"]) and kept.loc[0, "estimate"] == 101.0
    assert kept["mirrored"].tolist() == [True, False, False, True, False] and kept["mirrored"].dtype == bool
    pd.testing.assert_frame_equal(summarise(kept[kept["id"] != "5000"]), summarise(first.drop(columns="version")))


def test_a_run_with_readings_goes_on_where_the_shards_stopped(tmp_path, data_299, committed_artifacts,
                                                             committed_predictor, monkeypatch, capsys) -> None:
    """Shard 0 of 2 reads one of two films and prints its table as so far; a plain run then reads only the other film,
    and the table counts both."""
    import torch

    from benchmarks import bench_shift

    monkeypatch.setattr(bench_shift.Predictor, "load", classmethod(lambda cls, *a, **k: committed_predictor))
    common = ["--artifacts", str(committed_artifacts), "--data-dir", str(data_299), "--n", "2",
              "--transforms", "JPEG q75", "--readings", str(tmp_path / "kept"), "--threads",
              str(torch.get_num_threads())]
    assert bench_shift.main(common + ["--shard", "0/2"]) == 0
    assert "1 of 2 films read so far" in capsys.readouterr().out
    assert bench_shift.main(common + ["--kept-only"]) == 0
    assert "1 of 2 films read so far" in capsys.readouterr().out and not (tmp_path / "kept" / "test-0of1.csv").exists()
    with pytest.raises(SystemExit):
        bench_shift.main(common[:-4] + ["--readings", str(tmp_path / "typo"), "--kept-only"])
    assert not (tmp_path / "typo").exists()
    first = pd.read_csv(tmp_path / "kept" / "test-0of2.csv", dtype={"id": str})
    assert len(first) == 2 and set(first["version"]) == {committed_predictor.version}
    assert bench_shift.main(common + ["--out", str(tmp_path / "shift.md")]) == 0
    second = pd.read_csv(tmp_path / "kept" / "test-0of1.csv", dtype={"id": str})
    assert len(second) == 2 and set(second["id"]).isdisjoint(first["id"])
    table = (tmp_path / "shift.md").read_text()
    assert "n = 2" in table and "| JPEG q75 | 2 |" in table and "1 film(s) read" in table
    first[first["transform"] == shift.CLEAN].to_csv(tmp_path / "kept" / "test-0of2.csv", index=False)  # one dropped
    assert bench_shift.main(common + ["--out", str(tmp_path / "again.md")]) == 0
    third = pd.read_csv(tmp_path / "kept" / "test-0of1.csv", dtype={"id": str})
    assert len(third) == 3 and third.iloc[-1]["transform"] == "JPEG q75"  # only the missing reading was made again
    assert (tmp_path / "again.md").read_text().split("\n\n")[:2] == table.split("\n\n")[:2]
    whole = tmp_path / "whole.md"  # one run without kept readings: the same table
    assert bench_shift.main(common[:-4] + ["--threads", common[-1], "--out", str(whole)]) == 0
    assert whole.read_text().split("\n\n")[:2] == table.split("\n\n")[:2]
