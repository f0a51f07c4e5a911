"""app/state.py: the loaded models are cached per artifacts folder and manifest version, so a retrain in place is served."""

from __future__ import annotations

import shutil

from app import state
from boneage_core.manifest import build_manifest, write_manifest
from boneage_core.runtime import RUNTIME_ENV, TORCH


def test_a_new_manifest_in_the_same_folder_loads_the_new_models(format1_models, tmp_path, monkeypatch):
    monkeypatch.setenv(RUNTIME_ENV, TORCH)
    folder = tmp_path / "artifacts"
    shutil.copytree(format1_models, folder)
    write_manifest(folder, build_manifest(folder))
    first = state.get_predictor(str(folder))
    assert state.get_predictor(str(folder)) is first  # loaded once
    assert sorted(first.members) == ["classifier.pt", "regressor.pt"]
    write_manifest(folder, build_manifest(folder, ["regressor.pt"]))  # "retrained" in place: another manifest
    second = state.get_predictor(str(folder))
    assert second is not first and list(second.members) == ["regressor.pt"] and second.version != first.version
