"""About the models: data, the ensemble as its manifest describes it, preprocessing (from the checkpoints), limits."""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

from app import state
from boneage_core import plots
from boneage_core.heads import AGE, CNN, STAGE, age_stage_column, get_head, system_column
from boneage_core.imaging import ACCEPTED
from boneage_core.manifest import Manifest
from boneage_core.predictor import MEMBER_SPREAD_ABOVE, Predictor
from boneage_core.report import DISCLAIMER
from boneage_core.views import describe_views

logger = logging.getLogger(__name__)


def _data() -> None:
    st.subheader("Data")
    st.markdown(
        "The **RSNA Pediatric Bone Age Challenge (2017)** training set: **12,611** left-hand radiographs of "
        "children with a bone age in months read by radiologists, and the patient's sex. The models were "
        "trained on **299 px squashed copies** of these images (the aspect ratio is not kept). The split is "
        "70 / 15 / 15 % (train / validation / test), stratified by sex and age group; every number on the "
        "performance pages is on the test split.")
    split = state.load_split()
    if split is not None and "split" in split:
        counts = split["split"].value_counts()
        st.caption(" · ".join(f"{name}: {int(counts.get(name, 0)):,} images" for name in ("train", "val", "test")))


def _lineage_text(lineage: dict | None) -> str:
    """'init from imagenet' / 'init from 3f2a… (its own: imagenet)'."""
    if not lineage:
        return "unknown"
    text = f"init from {lineage.get('init_from', 'unknown')}"
    parent = lineage.get("parent_sha256")
    if parent:
        text += f" (parent {str(parent)[:12]})"
    return text


def _ensemble(manifest: Manifest | None, predictor: Predictor | None) -> None:
    st.subheader("The model")
    if manifest is None:
        return
    heads = manifest.heads()
    version = predictor.version if predictor is not None else "not loaded"
    st.markdown(
        f"**Model version {version}** (the first 12 hex digits of manifest.json's SHA-256; every report carries "
        f"it). An ensemble of **{len(manifest.members)}** member(s) providing the head(s) "
        f"**{', '.join(get_head(h).label for h in heads)}**; **{describe_views(manifest.views)}** "
        "(as in the holdout evaluation). Members' outputs are averaged "
        "per head after decoding (months; stage probabilities).")
    rows = []
    for name in manifest.members:
        entry = manifest.models[name]
        rows.append({"member": name, "heads": ", ".join(entry.get("heads") or []), "backbone": entry.get("backbone"),
                     "input size (px)": entry.get("image_size"), "lineage": _lineage_text(entry.get("lineage")),
                     "created": str(entry.get("created", "?")), "commit": str(entry.get("git_commit") or "?")[:10],
                     "sha256": str(entry.get("sha256", ""))[:12]})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="about_members")
    evaluation = manifest.evaluation or {}
    if evaluation:
        st.caption(f"Evaluated on the {evaluation.get('split', '?')} split ({evaluation.get('n_images', '?')} images) "
                   f"on {evaluation.get('created', '?')}.")
    _calibration(predictor)
    with st.expander("Lineage and training records (manifest.json)"):
        st.json({name: {"lineage": manifest.models[name].get("lineage"),
                        "training": manifest.models[name].get("training")} for name in manifest.members})


def _calibration(predictor: Predictor | None) -> None:
    calibration = None if predictor is None else predictor.calibration
    if calibration is None:
        st.caption("No calibration: bone ages are shown as the network gives them, without a prediction interval.")
        return
    fitted = calibration.fitted_on
    st.markdown(
        f"**Calibration** (fitted on the {fitted.get('n', calibration.n_fit + calibration.n_conformal)} "
        f"{calibration.split} images, never trained on): the shown bone age is "
        f"**{calibration.intercept:+.1f} + {calibration.slope:.3f} × the network's estimate** (the network pulls "
        "towards the mean age; this undoes it). The "
        f"{calibration.level:.0%} interval is split-conformal: its width follows the model's typical error at that "
        f"age, scaled so that {calibration.level:.0%} of {calibration.n_conformal} held-out validation images fell "
        "inside. Its coverage on the test split, by age group, is on the Model performance page.")


def _preprocessing(predictor: Predictor) -> None:
    st.subheader("Preprocessing and architecture")
    specs = {name: net.spec for name, net in predictor.members.items()}
    first = next(iter(specs.values())).preprocess
    same = all(spec.preprocess == first for spec in specs.values())
    st.markdown(
        f"Each image is read as grayscale ({ACCEPTED}, 8 or 16 bit, inverted MONOCHROME1 "
        f"handled), resized to **{first.image_size}×{first.image_size} px** without keeping the aspect ratio "
        f"(like the training copies) after white padding around the film is cut off, contrast-stretched between its **{first.low_percentile:g}th and "
        f"{first.high_percentile:g}th percentiles** to [0, 1] (a grainy film, grainier than any training film, is "
        "smoothed before the stretch), then normalised inside the network. These values "
        "are read from the checkpoint" + ("s." if same else "s (they differ between members; see the table)."))
    st.dataframe(pd.DataFrame({name: spec.preprocess.to_dict() for name, spec in specs.items()}),
                 key="about_preprocess")
    st.markdown(
        "An ImageNet-pretrained backbone turns the image into a feature vector; the sex enters through a small "
        "learned embedding concatenated to it; each head is a small MLP: the bone-age head outputs the "
        f"standardised age, the stage head the logits of the {predictor.scheme.n_classes} developmental stages. "
        "The heatmaps are HiResCAM (gradient x activation) on a late backbone stage: for the age head, what moved "
        "the estimate away from the mean age in the direction it moved; for the stage head, the stage shown. Before "
        "scoring, an input gate compares the image's features (the pooled features and the texture statistics of a "
        f"mid-level backbone block of `{predictor.gate_name}`) with the training images and refuses what does not "
        "look like a hand radiograph; a radiograph-or-not model on the same features, trained on films and on "
        "images that are not hand radiographs, lets a grainy film or one just past the limit that it reads as a "
        "radiograph through with a warning, refuses what it reads as clearly not one, warns about a film it doubts "
        "(films it doubted were read with 2 to 5 times the usual error), and must read an image "
        "rescued by a correction as a radiograph. The gate judges the image as given; it inverts back an "
        "inverted grey scale when the image inverted back reads as surely not inverted (else it warns), turns back a film it is sure is rotated or that one turn makes surely upright, tries "
        "the likeliest turn before refusing, mirrors a right hand, and flags a possible rotation. When the networks' "
        f"estimates lie more than {MEMBER_SPREAD_ABOVE:g} months apart, the report says they disagree. A HOG + XGBoost "
        "model on the same split is the baseline.")
    st.markdown("**Stages** (bone-age ranges):")
    st.dataframe(pd.DataFrame({
        "stage": predictor.scheme.names,
        "girls": [predictor.scheme.range_text(i, False) for i in range(predictor.scheme.n_classes)],
        "boys": [predictor.scheme.range_text(i, True) for i in range(predictor.scheme.n_classes)],
    }), hide_index=True, key="about_stages")


def _headline() -> None:
    st.subheader("Holdout results")
    metrics = state.load_metrics()
    if metrics is None:
        return
    age = metrics.get(system_column(CNN, AGE)) or {}
    stage_cols = [c for c in (system_column(CNN, STAGE), age_stage_column(CNN)) if (metrics.get(c) or {}).get("n")]
    cols = st.columns(2 + len(stage_cols))
    if age.get("mae") is not None:
        cols[0].metric("CNN ensemble MAE", f"{age['mae']:.1f} months")
        cols[1].metric("Within 12 months", f"{age.get('within_12m', float('nan')):.0%}")
    for col, column in zip(cols[2:], stage_cols):
        col.metric(f"QWK, {plots.column_title(column, STAGE)}", f"{metrics[column]['qwk']:.2f}")
    table = plots.regression_table(metrics)
    if not table.empty:
        st.caption(f"n = {int(table.iloc[0, 0])} test images. Details on the Model performance page.")


def _limits() -> None:
    st.subheader("Limits and intended use")
    st.warning(f"**{DISCLAIMER}**")
    st.markdown(
        "- **Small, CPU-trained models** at low resolution, a few epochs under a time limit. Published models "
        "reach a MAE of about 4–6 months; this one is clearly less accurate.\n"
        "- **Not validated on external data:** all numbers come from a held-out part of the same RSNA data "
        "set. Other scanners, hospitals and populations may give larger errors.\n"
        "- **RSNA population:** two US children's hospitals; few infants (under 2 years) and few late "
        "adolescents, so results there are the least reliable (see Subgroups and bias).\n"
        "- **Labels** are single radiologist reads with their own variability; the Greulich-Pyle/Brush "
        "reference for z-scores is a historical cohort.\n"
        "- **Input:** a left-hand PA radiograph of a child. Other images are refused when the input check "
        "recognises them; anything it lets through gives a meaningless number.")


def main() -> None:
    st.title("About")
    _data()
    manifest = state.load_manifest()
    predictor = state.predictor_or_none()
    _ensemble(manifest, predictor)
    if predictor is not None:
        _preprocessing(predictor)
    _headline()
    _limits()


try:
    main()
except Exception:  # last resort: never show a traceback to the user
    logger.exception("About page failed")
    st.error("Something went wrong while drawing this page. The details are in the server log.")
