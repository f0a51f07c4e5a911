"""Build everything in artifacts/: split, HOG + XGBoost baseline, EfficientNet regressor and classifier, metrics.

Examples:
    python train.py --data-dir ../shared/data/rsna-bone-age-299 --stages baseline,evaluate
    python train.py --data-dir ../shared/data/rsna-bone-age-299 --quick --out /tmp/quick
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from boneage_core.config import BACKBONES, STAGE_ORDER, TrainConfig
from boneage_core.data import LabelError
from boneage_core.pipeline import run, seed_everything

logger = logging.getLogger("train")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """argparse -> TrainConfig (every config field has a flag; defaults come from the dataclass)."""
    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", required=True, help="RSNA layout: <name>.csv + <name>/ image folder")
    p.add_argument("--stages", default=",".join(STAGE_ORDER), help=f"comma list of {STAGE_ORDER}")
    p.add_argument("--quick", action="store_true", help="a few hundred images at small size (~1 min on CPU)")
    p.add_argument("--backbone", choices=BACKBONES, default=defaults.backbone)
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="random init instead of the shipped ImageNet weights (tests); pretrained=%(default)s")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="augment=%(default)s")
    p.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on CPU (faster on CPUs with bf16 units)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation in the evaluate stage")
    skip = {"data_dir", "stages", "quick", "backbone", "pretrained", "augment", "cpu_bf16", "tta"}
    for f in fields(TrainConfig):
        if f.name not in skip:
            p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                           default=getattr(defaults, f.name))
    args = vars(p.parse_args(argv))
    args["stages"] = tuple(s.strip() for s in args["stages"].split(",") if s.strip())
    cfg = TrainConfig(**args)
    return cfg.quick_version() if cfg.quick else cfg


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_args(argv)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    seed_everything(cfg.seed)
    try:
        run(cfg)
    except LabelError as exc:
        logger.error("Data problem: %s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("Interrupted; previous artifacts in %s are unchanged", cfg.out)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
