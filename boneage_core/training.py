"""Training for BoneAgeNet: phases (image size, epochs or minutes, learning rate, frozen stages), augmentation, EMA, SAM."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .distributed import LOCAL, DistContext, shard_indices
from .heads import get_head
from .inference import autocast, cpu_has_bf16, member_outputs, to_input
from .models import BoneAgeNet, freeze_blocks

logger = logging.getLogger(__name__)


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation (Foret et al., 2021) around any base optimizer.

    Use: loss.backward(); opt.first_step(); loss_fn().backward(); opt.second_step().
    """

    def __init__(self, params, base_optimizer_cls, rho: float = 0.05, **kwargs):
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer_cls(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        norms = [p.grad.norm(2) for g in self.param_groups for p in g["params"] if p.grad is not None]
        return torch.norm(torch.stack(norms), 2) if norms else torch.tensor(0.0)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True) -> None:
        """Move to the (approximate) worst point within an L2 ball of radius rho."""
        scale_norm = self._grad_norm() + 1e-12
        for group in self.param_groups:
            scale = group["rho"] / scale_norm
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * scale.to(p)
                p.add_(e_w)
                self.state[p]["e_w"] = e_w
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = True) -> None:
        """Return to the original weights and take the base optimizer's step with the perturbed gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if "e_w" in self.state[p]:
                    p.sub_(self.state[p].pop("e_w"))
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure=None):  # noqa: D401 - torch API
        """Full SAM step given a closure that re-evaluates the loss (with backward)."""
        if closure is None:
            raise RuntimeError("SAM.step needs a closure; or call first_step/second_step")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()


def check_probability(name: str, p: float) -> None:
    """ValueError unless 0 <= p <= 1."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")


def flip_horizontal(x: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image of a (B, C, H, W) batch left-right with probability `prob` (one draw per image).

    Nothing is drawn from the generator when prob is 0, so a run without flips keeps its random stream.
    """
    check_probability("flip probability", prob)
    if prob == 0.0:
        return x
    chosen = torch.rand(x.shape[0], generator=generator, device="cpu") < prob
    return torch.where(chosen.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def augment(x: torch.Tensor, generator: torch.Generator | None = None, max_rotation: float = 15.0,
            scale: tuple[float, float] = (0.9, 1.1), max_shift: float = 0.06,
            brightness: float = 0.1, contrast: tuple[float, float] = (0.85, 1.15),
            flip_prob: float = 0.0) -> torch.Tensor:
    """Random rotation, scale, shift, brightness, contrast and left-right flips on a (B, 1, H, W) batch in [0, 1].

    Works on the batch's device; each image is mirrored with probability `flip_prob` after the affine and
    intensity changes (0, the default, draws nothing for it).
    """
    b, device = x.shape[0], x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, device="cpu").to(device) * (hi - lo) + lo

    angle = uniform(-max_rotation, max_rotation) * math.pi / 180
    s = uniform(*scale)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack(
        [torch.stack([cos, -sin, uniform(-max_shift, max_shift) * 2], 1),
         torch.stack([sin, cos, uniform(-max_shift, max_shift) * 2], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    c = uniform(*contrast).view(b, 1, 1, 1)
    br = uniform(-brightness, brightness).view(b, 1, 1, 1)
    mean = out.mean(dim=(2, 3), keepdim=True)
    return flip_horizontal(((out - mean) * c + mean + br).clamp(0.0, 1.0), flip_prob, generator)




@dataclass(frozen=True)
class Phase:
    """One stretch of training at one image size; ends after `epochs` or `minutes`, whichever comes first."""

    image_size: int
    epochs: int = 1
    lr: float = 1e-3
    freeze_blocks: int = 0
    minutes: float = 0.0  # 0 = no time limit of its own

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_phases(text: str) -> tuple[Phase, ...]:
    """'SIZE:EPOCHS[:LR[:FREEZE[:MINUTES]]]' comma-separated, e.g. '176:2:1e-3:3,224:2:5e-4:3'."""
    phases = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        fields_ = part.split(":")
        if not 2 <= len(fields_) <= 5:
            raise ValueError(f"phase {part!r}: expected SIZE:EPOCHS[:LR[:FREEZE[:MINUTES]]]")
        try:
            size, epochs = int(fields_[0]), int(fields_[1])
            lr = float(fields_[2]) if len(fields_) > 2 else 1e-3
            freeze = int(fields_[3]) if len(fields_) > 3 else 0
            minutes = float(fields_[4]) if len(fields_) > 4 else 0.0
        except ValueError as exc:
            raise ValueError(f"phase {part!r}: {exc}") from exc
        if size < 32 or epochs < 1 or lr <= 0 or freeze < 0 or minutes < 0:
            raise ValueError(f"phase {part!r}: size >= 32, epochs >= 1, lr > 0, freeze >= 0, minutes >= 0")
        phases.append(Phase(size, epochs, lr, freeze, minutes))
    if not phases:
        raise ValueError("at least one training phase is needed")
    return tuple(phases)


@dataclass(frozen=True)
class FitConfig:
    """The settings `fit` uses (and nothing else of the run's configuration)."""

    batch_size: int = 32
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    optimizer: str = "adamw"  # adamw | sam
    sam_rho: float = 0.05
    ema_decay: float = 0.998
    patience: int = 6
    augment: bool = True
    cpu_bf16: bool = False
    seed: int = 42
    max_train_minutes: float = 0.0  # whole run, all phases (0 = no limit)
    flip_prob: float = 0.0  # left-right mirroring per training image (part of augment; 0 = the recipe before flips)

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sam"):
            raise ValueError(f"optimizer must be adamw or sam, got {self.optimizer!r}")
        check_probability("flip_prob", self.flip_prob)


@dataclass
class Split:
    """uint8 images (N, S, S), sex (N,) and true bone ages in months (N,) of one data split."""

    images: torch.Tensor
    male: torch.Tensor
    boneage: np.ndarray


@dataclass
class FitResult:
    """Outcome of a training run: the best (EMA) weights of the last phase, per-epoch history, and why it stopped."""

    state_dict: dict
    history: pd.DataFrame
    best_epoch: int
    best_score: float
    stopped: str
    seconds: float
    image_size: int
    phases_run: int = 0
    notes: list[str] = field(default_factory=list)


def _optimizer(net: BoneAgeNet, cfg: FitConfig, lr: float):
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sam":
        return SAM(groups, torch.optim.AdamW, rho=cfg.sam_rho, lr=lr)
    return torch.optim.AdamW(groups, lr=lr)


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up over the first `warmup` fraction of a phase, then cosine to 0 (progress in [0, 1])."""
    if progress < warmup:
        return (progress + 1e-3) / max(warmup, 1e-3)
    return 0.5 * (1.0 + math.cos(math.pi * min((progress - warmup) / max(1.0 - warmup, 1e-9), 1.0)))


def validate(net: BoneAgeNet, val: Split, device: torch.device) -> dict[str, float]:
    """Validation score of every head (lower is better: MAE in months, stage NLL), through the inference path."""
    outs = member_outputs(net, val.images, val.male, device)  # the image alone (views.NO_TTA)
    male = val.male.numpy()
    return {h: get_head(h).val_score(views[0], val.boneage, male, net.spec.scheme) for h, views in outs.items()}


class _Clock:
    """Wall-clock budget of the whole run and of the current phase."""

    def __init__(self, max_minutes: float):
        self.t0, self.max_s = time.time(), max_minutes * 60
        self.phase_t0, self.phase_s = self.t0, 0.0
        self.steps = 0  # optimizer steps of the whole run (the EMA warm-up counts them)

    def start_phase(self, minutes: float) -> None:
        self.phase_t0, self.phase_s = time.time(), minutes * 60

    def run_left(self) -> float:
        return math.inf if not self.max_s else self.max_s - (time.time() - self.t0)

    def phase_progress(self) -> float:
        return 0.0 if not self.phase_s else (time.time() - self.phase_t0) / self.phase_s

    def out_of_time(self) -> str:
        if self.max_s and self.run_left() <= 0:
            return f"time budget of {self.max_s / 60:g} min reached"
        if self.phase_s and self.phase_progress() >= 1:
            return f"phase time of {self.phase_s / 60:g} min reached"
        return ""


#: With BONEAGE_SHARD_LOG=<dir>, each rank writes <dir>/rank<r>.json: the train-split positions it got in
#: the first epoch of a fit (a check that the ranks' shards are disjoint; a later fit of the run overwrites it).
SHARD_LOG_ENV = "BONEAGE_SHARD_LOG"


@dataclass
class _Loop:
    """What every training step needs: network, DDP wrapper (or the network), EMA, clock, RNG, device, process group."""

    net: BoneAgeNet
    model: torch.nn.Module
    ema: Any  # timm ModelEmaV3
    clock: _Clock
    gen: torch.Generator
    device: torch.device
    dist: DistContext
    cfg: FitConfig
    epochs_done: int = 0  # epochs of the whole run (seeds the shards)


def _from_main(dist: DistContext, value: Callable[[], object]):
    """value() as rank 0 computes it, on every rank (the clock is read once, so all ranks decide alike)."""
    return dist.broadcast_object(value() if dist.is_main else None)


def _phase_progress(clock: _Clock, dist: DistContext) -> float:
    return _from_main(dist, clock.phase_progress) if clock.phase_s else 0.0


def _out_of_time(clock: _Clock, dist: DistContext) -> str:
    return _from_main(dist, clock.out_of_time) if clock.max_s or clock.phase_s else ""


def _run_over(clock: _Clock, dist: DistContext) -> bool:
    return _from_main(dist, clock.run_left) <= 0


def _wrap(net: BoneAgeNet, dist: DistContext, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `net` when several processes train (after freezing: DDP skips frozen weights)."""
    if not dist.enabled:
        return net
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def _epoch_order(n: int, loop: _Loop) -> torch.Tensor:
    """One process: a permutation from the run's generator (as always); several: this rank's shard of the epoch."""
    if not loop.dist.enabled:
        order = torch.randperm(n, generator=loop.gen)
    else:
        order = shard_indices(n, loop.epochs_done, loop.cfg.seed, loop.dist.rank, loop.dist.world)
    _log_shard(order, loop)
    return order


def _log_shard(order: torch.Tensor, loop: _Loop) -> None:
    folder = os.environ.get(SHARD_LOG_ENV)
    if folder and loop.epochs_done == 0:
        path = Path(folder) / f"rank{loop.dist.rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rank": loop.dist.rank, "world": loop.dist.world, "indices": order.tolist()}))


def _train_step(model, opt, x, targets, heads, cfg: FitConfig, device) -> torch.Tensor:
    def closure() -> torch.Tensor:
        with autocast(device, cfg.cpu_bf16):
            out = model(x, targets["male"])
        loss = sum(get_head(h).loss(out[h], targets[h]) for h in heads)
        loss.backward()
        return loss

    loss = closure()
    if isinstance(opt, SAM):
        opt.first_step(zero_grad=True)
        closure()
        opt.second_step(zero_grad=True)
    else:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss.detach()


def _run_epoch(loop: _Loop, opt, train: Split, targets: dict, phase: Phase, epoch: int,
               desc: str) -> tuple[float, int, str]:
    """One pass over this rank's shuffled training images; returns (mean loss, images seen, why it ended early)."""
    cfg, heads, clock, dist = loop.cfg, loop.net.spec.heads, loop.clock, loop.dist
    order = _epoch_order(len(train.images), loop)
    steps = max(1, len(order) // cfg.batch_size)
    running, seen, why = 0.0, 0, ""
    base = opt.base_optimizer if isinstance(opt, SAM) else opt
    bar = tqdm(range(steps), desc=desc, leave=False, disable=not dist.is_main)
    for step in bar:
        progress = max((epoch * steps + step) / (phase.epochs * steps), _phase_progress(clock, dist))
        for group in base.param_groups:
            group["lr"] = phase.lr * lr_factor(progress, min(cfg.warmup_epochs / phase.epochs, 0.5))
        idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        x = to_input(train.images[idx], loop.device)
        if cfg.augment:
            x = augment(x, loop.gen, flip_prob=cfg.flip_prob)
        batch = {h: targets[h][idx].to(loop.device) for h in heads}
        batch["male"] = train.male[idx].to(loop.device)
        loss = _train_step(loop.model, opt, x, batch, heads, cfg, loop.device)
        clock.steps += 1
        loop.ema.update(loop.net, step=clock.steps)
        running += loss.item() * len(idx)
        seen += len(idx)
        bar.set_postfix(loss=f"{running / seen:.4f}")
        why = _out_of_time(clock, dist)
        if why:
            break
    loop.epochs_done += 1
    return _mean_over_ranks(running / max(seen, 1), loop), seen * dist.world, why


def _mean_over_ranks(value: float, loop: _Loop) -> float:
    if not loop.dist.enabled:
        return value
    return loop.dist.all_reduce_mean(torch.tensor(value, dtype=torch.float64, device=loop.device)).item()


def _validate_on_main(loop: _Loop, val: Split) -> dict[str, float]:
    """Rank 0 scores the EMA weights on the whole validation split; every rank gets its scores (and decides alike).

    One rank and not a sharded validation: the split is small next to training, and a head's score
    (MAE, NLL) is then computed exactly as in a single-process run.
    """
    scores = validate(loop.ema.module, val, loop.device) if loop.dist.is_main else None
    return loop.dist.broadcast_object(scores)


def fit(net: BoneAgeNet, data: Callable[[int], tuple[Split, Split]], cfg: FitConfig, phases: Sequence[Phase],
        device: torch.device, dist: DistContext = LOCAL) -> FitResult:
    """Train `net` through `phases`; keep the best EMA weights (by the first head's validation score) of the last phase.

    `data(image_size)` returns the (train, val) splits at that size. The network's spec takes each
    phase's image size, so the saved checkpoint's input size is the last phase's. With `dist` of
    several processes (torchrun), the network is wrapped in DistributedDataParallel, each rank trains
    on its shard of every epoch (`batch_size` per rank), and rank 0 validates and keeps the clock for all.
    """
    from timm.utils import ModelEmaV3

    torch.manual_seed(cfg.seed)
    if cfg.cpu_bf16 and device.type == "cpu" and not cpu_has_bf16():
        logger.warning("cpu_bf16 asked, but this CPU has no bf16 units (oneDNN would emulate bf16, ~17x slower "
                       "on AVX2): training in float32")
    gen = torch.Generator().manual_seed(cfg.seed + dist.rank)
    net.to(device).to(memory_format=torch.channels_last)
    ema = ModelEmaV3(net, decay=cfg.ema_decay, use_warmup=True)
    loop = _Loop(net, net, ema, _Clock(cfg.max_train_minutes), gen, device, dist, cfg)
    clock, history, primary = loop.clock, [], net.spec.heads[0]
    result = FitResult(net.state_dict(), pd.DataFrame(), -1, math.inf, "no phase ran", 0.0,
                       net.spec.preprocess.image_size)
    for p_index, phase in enumerate(phases):
        if p_index and _run_over(clock, dist):  # the first phase always runs (at least one step)
            result.notes.append(f"phases {p_index + 1}-{len(phases)} skipped: time budget spent")
            break
        for spec_holder in (net, ema.module):
            spec_holder.spec = dataclasses.replace(
                spec_holder.spec, preprocess=spec_holder.spec.preprocess.with_size(phase.image_size))
        freeze_blocks(net, phase.freeze_blocks)
        loop.model = _wrap(net, dist, device)
        train, val = data(phase.image_size)
        targets = {h: get_head(h).target(train.boneage, train.male.numpy(), net.spec) for h in net.spec.heads}
        opt = _optimizer(net, cfg, phase.lr)
        clock.start_phase(phase.minutes)
        best, best_state, since_best, stopped = math.inf, None, 0, f"completed {phase.epochs} epoch(s)"
        logger.info("Phase %d/%d: %d px, %d epoch(s), lr %g, %d frozen stage(s), %d train / %d val images%s",
                    p_index + 1, len(phases), phase.image_size, phase.epochs, phase.lr, phase.freeze_blocks,
                    len(train.images), len(val.images), f", {dist.world} processes" if dist.enabled else "")
        for epoch in range(phase.epochs):
            e0 = time.time()
            net.train()
            desc = f"phase {p_index + 1} {phase.image_size}px epoch {epoch + 1}/{phase.epochs}"
            train_loss, seen, why = _run_epoch(loop, opt, train, targets, phase, epoch, desc)
            scores = _validate_on_main(loop, val)
            row = {"epoch": loop.epochs_done, "phase": p_index + 1, "image_size": phase.image_size,
                   "train_loss": train_loss, "val_score": scores[primary],
                   **{f"val_{h}": v for h, v in scores.items()},
                   "lr": (opt.base_optimizer if isinstance(opt, SAM) else opt).param_groups[0]["lr"],
                   "seconds": time.time() - e0, "images_per_s": seen / max(time.time() - e0, 1e-9)}
            history.append(row)
            logger.info("%s: train %.4f, val %s (%.0f img/s)", desc, train_loss,
                        ", ".join(f"{h} {v:.4f}" for h, v in scores.items()), row["images_per_s"])
            if scores[primary] < best:
                best, since_best = scores[primary], 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in ema.module.state_dict().items()})
                result.best_epoch = loop.epochs_done
            else:
                since_best += 1
            if why:
                stopped = why
                break
            if since_best >= cfg.patience:
                stopped = f"early stop: no improvement for {cfg.patience} epochs"
                break
        result.state_dict, result.best_score, result.stopped = best_state, best, stopped
        result.image_size, result.phases_run = phase.image_size, p_index + 1
        logger.info("Phase %d ended: %s; best %s %.4f", p_index + 1, stopped, primary, best)
        if _run_over(clock, dist):
            result.stopped = f"time budget of {cfg.max_train_minutes:g} min reached in phase {p_index + 1}"
            if p_index + 1 < len(phases):
                result.notes.append(f"phases {p_index + 2}-{len(phases)} skipped: time budget spent")
            break
    result.history, result.seconds = pd.DataFrame(history), time.time() - clock.t0
    if result.notes:
        logger.warning("Training stopped early: %s", "; ".join(result.notes))
    return result
