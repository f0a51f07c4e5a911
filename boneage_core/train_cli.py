"""Command line of training: argparse -> TrainConfig -> pipeline.run (also `python train.py`, `boneage-train`).

Examples:
    python train.py --data-dir ../shared/data/rsna-bone-age-299 --stages baseline,evaluate
    python train.py --data-dir ../shared/data/rsna-bone-age-299 --stages multihead,evaluate --phases 192:4:1e-3:3,224:2:5e-4:3
    python train.py --data-dir ../shared/data/rsna-bone-age-299 --stages multihead,evaluate --init-from artifacts/multihead.pt --phases 256:2:3e-4
    python train.py --data-dir ../shared/data/rsna-bone-age-299 --quick            # smoke run into runs/quick
    python train.py --data-dir ../shared/data/rsna-bone-age-299 --preset gpu --epochs 20 --model-name multihead_s1
    python train.py --resume runs/long --max-train-minutes 110   # the next chunk of a run, from where it stopped
    torchrun --nproc-per-node 4 train.py --data-dir ../shared/data/rsna-bone-age-299 --stages multihead  # 4 GPUs
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields, replace
from pathlib import Path

from .config import (BACKBONES, PRESETS, QUICK_OUT, RESUME_MAY_CHANGE, STAGE_ORDER, TrainConfig, preset_config,
                     resume_conflicts)
from .training import FitConfig
from .artifacts import CONFIG_FILE, Terminated, check_writable
from .distributed import DistContext, init_from_env
from .errors import ArtifactError, BoneAgeError, ResumeError
from .inference import resolve_device
from .models import INIT_SCRATCH
from .pipeline import run, seed_everything
from .views import add_views_arguments

logger = logging.getLogger(__name__)

_SPECIAL = {"data_dir", "stages", "quick", "backbone", "augment", "cpu_bf16", "views", "hand_crop", "members", "out",
            "fit", "seed", "preset"}
_FIT_FIELDS = {f.name for f in fields(FitConfig)} - {"seed"}  # the run's --seed seeds the loop too


def _preset_parser(add_help: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__.splitlines()[0], add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=tuple(PRESETS), default="",
                   help="start from a named recipe (config.PRESETS); flags given here override its values")
    p.add_argument("--resume", metavar="RUN", default="",
                   help="go on training the run in folder RUN from its last saved epoch (RUN/resume/<model>.pt), "
                        f"with its own {CONFIG_FILE}; flags may change only {', '.join(sorted(RESUME_MAY_CHANGE))}")
    return p


def _parser(defaults: TrainConfig, resuming: bool = False) -> argparse.ArgumentParser:
    """Every flag, its default taken from `defaults` (the dataclass defaults, a preset's values, or a resumed run's)."""
    p = _preset_parser(add_help=True)
    p.add_argument("--data-dir", required=not resuming, default=defaults.data_dir,
                   help="RSNA layout: <name>.csv + <name>/ image folder")
    p.add_argument("--stages", default=",".join(defaults.stages), help=f"comma list of {STAGE_ORDER}")
    p.add_argument("--out", default=defaults.out if resuming else None,
                   help=f"artifacts folder (default {defaults.out}; {QUICK_OUT} with --quick)")
    p.add_argument("--quick", action="store_true", default=defaults.quick,
                   help="a few hundred images at small size (a CPU smoke run)")
    p.add_argument("--backbone", choices=BACKBONES, default=defaults.backbone)
    p.add_argument("--no-pretrained", dest="init_from", action="store_const", const=INIT_SCRATCH,
                   default=defaults.init_from, help="same as --init-from scratch")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=defaults.fit.augment,
                   help="random affine, intensity and (--flip-prob) flips while training")
    p.add_argument("--cpu-bf16", action=argparse.BooleanOptionalAction, default=defaults.fit.cpu_bf16,
                   help="bf16 autocast on CPU where it has bf16 units (AVX512-BF16/AMX); "
                        "ignored, with a warning, on CPUs without them (emulated bf16 is ~17x slower)")
    p.add_argument("--hand-crop", action=argparse.BooleanOptionalAction, default=defaults.hand_crop,
                   help="crop each image to the hand found in it before resizing (training and, via the "
                        "checkpoint, inference)")
    add_views_arguments(p, defaults.views, "of the calibrate and evaluate stages (recorded in the manifest and "
                        "served)")
    p.add_argument("--members", default=",".join(defaults.members), help="comma list of model files to serve and evaluate "
                   "(default: the ones this run trains)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    for owner in (defaults, defaults.fit):
        for f in fields(owner):
            if f.name not in _SPECIAL:
                p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(owner, f.name)),
                               default=getattr(owner, f.name))
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """argparse -> TrainConfig (every config field has a flag; defaults come from the dataclass, --preset or --resume).

    With --resume RUN the defaults are RUN's config.json and a flag that would change the run's plan is refused
    (ResumeError).
    """
    first = _preset_parser(add_help=False).parse_known_args(argv)[0]
    if first.resume:
        return _resume_config(first.resume, argv)
    return _config(vars(_parser(preset_config(first.preset) if first.preset else TrainConfig()).parse_args(argv)))


def _resume_config(folder: str, argv: list[str] | None) -> TrainConfig:
    """The config of the run in `folder` with the flags given; ResumeError when one of them changes its plan."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ResumeError(f"--resume {folder}: no {CONFIG_FILE} there, so not a run folder written by train.py (a "
                          "run writes it, with its resume states, when it ends)")
    run_cfg = replace(TrainConfig.load(path), out=folder)
    parser = _parser(run_cfg, resuming=True)
    parser.set_defaults(preset=run_cfg.preset)
    asked = _config(vars(parser.parse_args(argv)))
    conflicts = resume_conflicts(run_cfg, asked)
    if conflicts:
        raise ResumeError(f"--resume {folder}: these flags would change the run's plan: {'; '.join(conflicts)}. "
                          f"A resume may change only {', '.join(sorted(RESUME_MAY_CHANGE))}; start a new run "
                          "(--init-from a checkpoint of this one) to train otherwise")
    return asked


def _config(args: dict) -> TrainConfig:
    """The parsed flags as a TrainConfig (--quick shrunk)."""
    args.pop("resume")
    args["stages"] = tuple(s.strip() for s in args["stages"].split(",") if s.strip())
    args["members"] = tuple(s.strip() for s in args["members"].split(",") if s.strip())
    explicit_out = args["out"]
    args["out"] = explicit_out or (QUICK_OUT if args["quick"] else TrainConfig.out)
    fit = FitConfig(**{k: args.pop(k) for k in list(args) if k in _FIT_FIELDS})
    cfg = TrainConfig(**args, fit=fit)
    return replace(cfg.quick_version(), out=args["out"]) if cfg.quick else cfg


def main(argv: list[str] | None = None) -> int:
    """Run training; exit 0 on success, 2 for bad settings or data, 130 when interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_args(argv)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    try:
        check_writable(cfg.out)
    except ArtifactError as exc:
        logger.error("%s", exc)
        return 2
    seed_everything(cfg.seed)
    dist = _join(cfg)
    try:
        run(cfg, dist, resume=bool(_preset_parser(add_help=False).parse_known_args(argv)[0].resume))
    except (BoneAgeError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    except Terminated:
        logger.error("Terminated; previous artifacts in %s are unchanged", cfg.out)
        return 143
    except KeyboardInterrupt:
        logger.error("Interrupted; previous artifacts in %s are unchanged", cfg.out)
        return 130
    finally:
        dist.destroy()
    return 0


def _join(cfg: TrainConfig) -> DistContext:
    """The torchrun process group (single process without torchrun); INFO logs from rank 0 only."""
    dist = init_from_env(resolve_device(cfg.device))
    if not dist.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    return dist


if __name__ == "__main__":
    sys.exit(main())
