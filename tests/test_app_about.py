"""The About page reads preprocessing and architecture from the checkpoints, not from re-typed numbers."""

from __future__ import annotations



import dashboard



def test_about_page_describes_the_loaded_models(open_page):
    predictor = dashboard.get_predictor(str(dashboard.artifacts_dir()))
    spec = next(iter(predictor.models.values())).spec
    at = open_page("about")
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error
    text = " ".join(m.value for m in at.markdown)
    size = spec.preprocess.image_size
    assert f"{size}×{size} px" in text
    assert f"{spec.preprocess.low_percentile:g}th and {spec.preprocess.high_percentile:g}th" in text
    assert "12,611" in text and "299 px" in text
    tables = [d.value for d in at.dataframe if "backbone" in d.value.columns]
    assert len(tables) == 1, "the architecture table is missing"
    models = tables[0]
    assert set(models["model"]) == set(predictor.models)
    assert set(models["backbone"]) == {net.spec.backbone for net in predictor.models.values()}
    assert any("not a medical device" in w.value for w in at.warning)
    assert [m.label for m in at.metric][:1] == ["CNN MAE"]
