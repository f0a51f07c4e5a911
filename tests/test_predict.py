"""The predict CLI: one line or JSON object per image, errors per file, exit codes."""

from __future__ import annotations

import json

import pytest

from boneage_core import predict


def test_json_output_per_image_and_per_file_errors(quick_run, fullres_sample, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = predict.main(["--artifacts", str(quick_run), "--sex", "F", "--json", str(fullres_sample), str(broken)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert lines[0]["name"] == fullres_sample.name and 0 <= lines[0]["bone_age_months"] <= 240
    assert lines[0]["sex"] == "F"
    assert lines[1]["name"] == "broken.png" and "error" in lines[1]


def test_text_output_and_success_code(quick_run, fullres_sample, capsys):
    code = predict.main(["--artifacts", str(quick_run), "--sex", "male", str(fullres_sample)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(fullres_sample.name) and "bone_age=" in out and "stage=" in out


def test_missing_models_exit_2(tmp_path, fullres_sample, capsys):
    assert predict.main(["--artifacts", str(tmp_path), "--sex", "M", str(fullres_sample)]) == 2
    assert "no trained CNN" in capsys.readouterr().err


def test_corrupt_checkpoint_exit_2(tmp_path, fullres_sample, capsys):
    (tmp_path / "regressor.pt").write_bytes(b"not a checkpoint at all")
    assert predict.main(["--artifacts", str(tmp_path), "--sex", "F", str(fullres_sample)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err


def test_the_cli_prints_assess_reports_with_the_read_out(committed_artifacts, committed_predictor, fullres_sample,
                                                         gp_table, monkeypatch, capsys):
    from boneage_core.assess import assess

    monkeypatch.setenv("BONEAGE_GP_TABLE", str(gp_table))
    code = predict.main(["--artifacts", str(committed_artifacts), "--sex", "F", "--json",
                         "--chronological-age-months", "150", str(fullres_sample)])
    printed = json.loads(capsys.readouterr().out)
    expected = assess(committed_predictor, fullres_sample, "F", chronological_age_months=150.0).to_dict()
    assert code == 0 and printed.pop("timestamp") and expected.pop("timestamp")
    assert printed == expected and printed["clinical"]["chronological_age_months"] == 150.0
    code = predict.main(["--artifacts", str(committed_artifacts), "--sex", "F", "--birth-date", "2012-03-01",
                         "--study-date", "2024-09-15", str(fullres_sample)])
    assert code == 0 and " z=" in capsys.readouterr().out


def test_the_cli_refuses_a_bad_date(committed_artifacts, fullres_sample, capsys):
    with pytest.raises(SystemExit):
        predict.main(["--artifacts", str(committed_artifacts), "--sex", "F", "--birth-date", "1.3.2012",
                      str(fullres_sample)])
    assert "is not a date" in capsys.readouterr().err
