"""Shared command line of the benchmarks that run the committed predictor over the full-size samples."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from boneage_core.predictor import Predictor


def load_from_args(doc: str, argv: list[str] | None) -> tuple[Predictor, Path, Path]:
    """Parse --artifacts, --samples and --threads; set the torch threads; return (predictor, samples, artifacts)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--samples", type=Path, required=True, help="folder with the full-size PNGs and boneage-samples.csv")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return Predictor.load(args.artifacts), args.samples, args.artifacts
