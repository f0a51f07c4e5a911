"""About the models: data, preprocessing and architecture (read from the checkpoints), training, metrics, limits."""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

import dashboard
from boneage_core import plots
from boneage_core.predictor import Predictor

logger = logging.getLogger(__name__)


def _data() -> None:
    st.subheader("Data")
    st.markdown(
        "The **RSNA Pediatric Bone Age Challenge (2017)** training set: **12,611** left-hand radiographs of "
        "children with a bone age in months read by radiologists, and the patient's sex. The models were "
        "trained on **299 px squashed copies** of these images (the aspect ratio is not kept). The split is "
        "70 / 15 / 15 % (train / validation / test), stratified by sex and age group; every number on the "
        "performance pages is on the test split.")
    split = dashboard.load_split()
    if split is not None and "split" in split:
        counts = split["split"].value_counts()
        st.caption(" · ".join(f"{name}: {int(counts.get(name, 0)):,} images" for name in ("train", "val", "test")))


def _preprocessing(predictor: Predictor) -> None:
    st.subheader("Preprocessing")
    specs = {name: net.spec.preprocess for name, net in predictor.models.items()}
    first = next(iter(specs.values()))
    same = all(spec == first for spec in specs.values())
    st.markdown(
        "Each image is read as grayscale (PNG, JPEG, WebP or DICOM, 8 or 16 bit, inverted MONOCHROME1 "
        f"handled), resized to **{first.image_size}×{first.image_size} px** without keeping the aspect ratio "
        f"(like the training copies), contrast-stretched between its **{first.low_percentile:g}th and "
        f"{first.high_percentile:g}th percentiles** to [0, 1], then normalised inside the network as "
        f"(x − {first.mean:g}) / {first.std:g}. These values are read from the checkpoint"
        + ("" if same else "s (they differ between models; see the table)") + ".")
    st.dataframe(pd.DataFrame({name: spec.to_dict() for name, spec in specs.items()}), key="about_preprocess")


def _architecture(predictor: Predictor) -> None:
    st.subheader("Architecture")
    rows = []
    for name, net in predictor.models.items():
        spec = net.spec
        rows.append({
            "model": name, "task": spec.task, "backbone": spec.backbone,
            "image features": net.backbone.num_features, "sex embedding": spec.sex_embedding_dim,
            "outputs": spec.n_outputs,
            "parameters": f"{sum(p.numel() for p in net.parameters()) / 1e6:.1f} M",
            "trained": str(predictor.meta[name].get("created", "?")),
            "commit": str(predictor.meta[name].get("git_commit", "?"))[:10],
        })
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="about_models")
    st.markdown(
        "An ImageNet-pretrained EfficientNet backbone turns the image into a feature vector; the sex "
        "(female/male) enters through a small learned **embedding** concatenated to it; a two-layer head "
        "(256 units, SiLU, dropout) outputs the standardised bone age (regressor) or the logits of the "
        f"{predictor.scheme.n_classes} developmental stages (classifier). Grad-CAM uses the backbone's last "
        "convolution. A HOG + XGBoost model on the same split is the baseline.")
    st.markdown("**Stages** (bone-age ranges):")
    st.dataframe(pd.DataFrame({
        "stage": predictor.scheme.names,
        "girls": [predictor.scheme.range_text(i, False) for i in range(predictor.scheme.n_classes)],
        "boys": [predictor.scheme.range_text(i, True) for i in range(predictor.scheme.n_classes)],
    }), hide_index=True, key="about_stages")


def _training() -> None:
    st.subheader("Training configuration")
    config = dashboard.load_config()
    if config is not None:
        st.markdown(f"{config.get('epochs', '?')} epochs, batch {config.get('batch_size', '?')}, "
                    f"{config.get('optimizer', '?')} at lr {config.get('lr', '?')}, image size "
                    f"{config.get('image_size', '?')} px, time limit {config.get('max_train_minutes', '?')} min "
                    "per model.")
        with st.expander("config.json"):
            st.json(config)
    report = dashboard.load_report()
    if report is not None:
        with st.expander("Run report"):
            st.markdown(report)


def _headline() -> None:
    st.subheader("Holdout results")
    metrics = dashboard.load_metrics()
    if metrics is None:
        return
    cols = st.columns(4)
    reg, base = metrics.get("regressor") or {}, metrics.get("baseline_regressor") or {}
    cls = metrics.get("classifier") or {}
    if reg.get("mae") is not None:
        cols[0].metric("CNN MAE", f"{reg['mae']:.1f} months",
                       delta=(f"{reg['mae'] - base['mae']:+.1f} vs baseline" if base.get("mae") else None),
                       delta_color="inverse")
        cols[1].metric("Within 12 months", f"{reg.get('within_12m', float('nan')):.0%}")
    if cls.get("accuracy") is not None:
        cols[2].metric("Stage accuracy", f"{cls['accuracy']:.0%}")
        cols[3].metric("Stage QWK", f"{cls.get('qwk', float('nan')):.2f}")
    table = plots.regression_table(metrics)
    if not table.empty:
        st.caption(f"n = {int(table.iloc[0, 0])} test images. Details on the Model performance page.")


def _limits() -> None:
    st.subheader("Limits and intended use")
    st.warning(f"**{dashboard.DISCLAIMER}**")
    st.markdown(
        "- **Small, CPU-trained models:** EfficientNet-Lite0 at low resolution, a few epochs under a time "
        "limit. Published models reach a MAE of about 4–6 months; this one is clearly less accurate.\n"
        "- **Not validated on external data:** all numbers come from a held-out part of the same RSNA data "
        "set. Other scanners, hospitals and populations may give larger errors.\n"
        "- **RSNA population:** two US children's hospitals; few infants (under 2 years) and few late "
        "adolescents, so results there are the least reliable (see Subgroups and bias).\n"
        "- **Labels** are single radiologist reads with their own variability; the Greulich-Pyle/Brush "
        "reference for z-scores is a historical cohort.\n"
        "- **Input:** a left-hand PA radiograph of a child. Other body parts, adults or photographs give "
        "meaningless numbers; the app refuses only clearly unreadable or colour images.")


def main() -> None:
    st.title("About")
    _data()
    predictor = dashboard.predictor_or_none()
    if predictor is not None:
        _preprocessing(predictor)
        _architecture(predictor)
    _training()
    _headline()
    _limits()


try:
    main()
except Exception:  # last resort: never show a traceback to the user
    logger.exception("About page failed")
    st.error("Something went wrong while drawing this page. The details are in the server log.")
