"""The About page describes the ensemble from manifest.json and the preprocessing from the checkpoints."""

from __future__ import annotations

from app import state
from boneage_core.manifest import read_manifest
from boneage_core.views import describe_views


def test_about_page_describes_the_ensemble(open_page):
    manifest = read_manifest(state.artifacts_dir())
    assert manifest is not None, "the committed artifacts need a manifest.json"
    predictor = state.get_predictor(str(state.artifacts_dir()))
    spec = next(iter(predictor.members.values())).spec
    at = open_page("about")
    assert not at.error
    text = " ".join(m.value for m in at.markdown)
    assert predictor.version in text, "the model version hash"
    assert describe_views(manifest.views) in text
    size = spec.preprocess.image_size
    assert f"{size}×{size} px" in text
    members = next(d.value for d in at.dataframe if "member" in d.value.columns)
    assert list(members["member"]) == manifest.members
    assert list(members["backbone"]) == [manifest.models[m]["backbone"] for m in manifest.members]
    assert list(members["input size (px)"]) == [manifest.models[m]["image_size"] for m in manifest.members]
    assert all(members["lineage"].str.len() > 0)
    assert at.metric, "holdout headline figures"
