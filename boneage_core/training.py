"""Training for BoneAgeNet: phases (image size, epochs or minutes, learning rate, frozen stages), augmentation, EMA, SAM."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .acquisition import jpeg
from .distributed import LOCAL, DistContext, shard_indices
from .errors import ResumeError
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


#: Ranges of the acquisition changes `acquisition_shift` draws from (benchmarks/bench_shift.py measures the same kinds):
#: gamma of the grey scale; Gaussian noise (sd, in [0, 1] units: 3 grey levels of a low-contrast film after the
#: contrast stretch are ~0.03); blur (Gaussian sd, pixels); down-sampling factor before scaling back; JPEG quality;
#: the grey window the film had when it was saved as JPEG (a share of the 8 bits: a user's JPEG comes before the
#: contrast stretch, which scales its blocks up by 1 / window; the data set's films span 0.6-0.96 of them).
SHIFT_GAMMA = (0.6, 1.6)
SHIFT_NOISE_SD = (0.005, 0.04)
SHIFT_BLUR_SD = (0.3, 1.5)
SHIFT_DOWNSAMPLE = (0.4, 0.85)
SHIFT_JPEG_QUALITY = (15, 90)
SHIFT_JPEG_WINDOW = (0.35, 1.0)
SHIFT_KINDS = ("gamma", "blur", "downsample", "noise", "jpeg")  # the order they are applied in


def _gaussian_blur(x: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """Blur each image of a (B, 1, H, W) batch with its own Gaussian sd (pixels), separable, reflect padding."""
    radius = int(math.ceil(3 * float(sd.max())))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sd.view(-1, 1).to(x.dtype)) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)  # (B, K)
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect").reshape(1, b, h + 2 * radius, w + 2 * radius)
    rows = F.conv2d(padded, kernel.view(b, 1, 1, -1), groups=b)
    both = F.conv2d(rows, kernel.view(b, 1, -1, 1), groups=b)
    return both.reshape(x.shape)


def _jpeg(x: torch.Tensor, quality: Sequence[int]) -> torch.Tensor:
    """Each image of a (B, 1, H, W) batch in [0, 1] saved as a greyscale JPEG of its own quality
    (``acquisition.jpeg``, as the shift benchmark saves one) and decoded back."""
    images = x[:, 0].detach().float().cpu().numpy()
    out = np.stack([np.asarray(Image.open(BytesIO(jpeg(img, int(q)))).convert("L")) for img, q in zip(images, quality)])
    return torch.from_numpy(out).unsqueeze(1).to(x.device, x.dtype).div(255.0)


def _jpeg_at_window(x: torch.Tensor, quality: Sequence[int], window: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """`_jpeg` of each image squeezed into its grey window (a share of [0, 1], starting at its offset's share of
    the room left) and stretched back: the blocks and banding a film saved as JPEG before the contrast stretch shows."""
    w, lo = window.view(-1, 1, 1, 1).to(x.dtype), ((1 - window) * offset).view(-1, 1, 1, 1).to(x.dtype)
    return ((_jpeg(x * w + lo, quality) - lo) / w).clamp(0.0, 1.0)


def acquisition_shift(x: torch.Tensor, generator: torch.Generator | None = None, prob: float = 0.0) -> torch.Tensor:
    """Changes a film picks up between scanner and upload, each applied to an image with probability `prob`.

    On a (B, 1, H, W) batch in [0, 1], in the order of SHIFT_KINDS: gamma, blur, down-sampling and back,
    Gaussian noise, JPEG re-compression at the grey window the film had before its contrast stretch (ranges: the
    SHIFT_* constants). The networks trained on one smooth
    299 px WebP conversion read JPEG-compressed and noisy films months wrong (docs/shift.md); these are the
    changes that teach them not to. Nothing is drawn when prob is 0, so a run without them keeps its random stream.
    """
    check_probability("acquisition shift probability", prob)
    if prob == 0.0:
        return x
    b, device, out = x.shape[0], x.device, x.clone()

    def draw(lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Which images get this change (indices on the batch's device) and the value of each of them."""
        chosen = torch.rand(b, generator=generator) < prob
        values = torch.rand(b, generator=generator) * (hi - lo) + lo
        return chosen.nonzero().flatten().to(device), values[chosen].to(device, x.dtype)

    idx, log_gamma = draw(math.log(SHIFT_GAMMA[0]), math.log(SHIFT_GAMMA[1]))
    out[idx] = out[idx].clamp(1e-6, 1.0) ** log_gamma.exp().view(-1, 1, 1, 1)
    idx, sd = draw(*SHIFT_BLUR_SD)
    if len(idx):
        out[idx] = _gaussian_blur(out[idx], sd)
    idx, factor = draw(*SHIFT_DOWNSAMPLE)
    size = x.shape[-2:]
    for i, f in zip(idx.tolist(), factor.tolist()):
        small = F.interpolate(out[i:i + 1], scale_factor=f, mode="bilinear", antialias=True, align_corners=False)
        out[i:i + 1] = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
    idx, sd = draw(*SHIFT_NOISE_SD)
    noise = torch.randn((len(idx), *x.shape[1:]), generator=generator).to(device, x.dtype)
    out[idx] = (out[idx] + noise * sd.view(-1, 1, 1, 1)).clamp(0.0, 1.0)
    idx, quality = draw(*SHIFT_JPEG_QUALITY)
    if len(idx):
        window = torch.rand(len(idx), generator=generator) * (SHIFT_JPEG_WINDOW[1] - SHIFT_JPEG_WINDOW[0])
        offset = torch.rand(len(idx), generator=generator)
        out[idx] = _jpeg_at_window(out[idx], quality.round().int().tolist(), window.add(SHIFT_JPEG_WINDOW[0]).to(device),
                                   offset.to(device))
    return out


def augment(x: torch.Tensor, generator: torch.Generator | None = None, max_rotation: float = 15.0,
            scale: tuple[float, float] = (0.9, 1.1), max_shift: float = 0.06,
            brightness: float = 0.1, contrast: tuple[float, float] = (0.85, 1.15),
            flip_prob: float = 0.0, shift_prob: float = 0.0) -> torch.Tensor:
    """Random rotation, scale, shift, brightness, contrast, left-right flips and acquisition changes on a
    (B, 1, H, W) batch in [0, 1].

    Works on the batch's device; each image is mirrored with probability `flip_prob` after the affine and
    intensity changes (0, the default, draws nothing for it), then given each acquisition change
    (`acquisition_shift`) with probability `shift_prob` (0, the default, draws nothing either).
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
    out = flip_horizontal(((out - mean) * c + mean + br).clamp(0.0, 1.0), flip_prob, generator)
    return acquisition_shift(out, generator, shift_prob)




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
    shift_prob: float = 0.0  # each acquisition change (gamma, blur, down-sampling, noise, JPEG) per training image

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sam"):
            raise ValueError(f"optimizer must be adamw or sam, got {self.optimizer!r}")
        check_probability("flip_prob", self.flip_prob)
        check_probability("shift_prob", self.shift_prob)


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
    first_epoch: int = 1  # the run epoch this fit started at (> 1 when it resumed a run)
    finished: bool = False  # every phase ended (completed, early stop or its minutes): a resume has nothing left


def fit_plan(cfg: FitConfig, phases: Sequence[Phase]) -> dict:
    """What a resumed fit must share with the run it continues: the phases and the loop settings but the budget."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "max_train_minutes"}
    return {"phases": [p.to_dict() for p in phases], "fit": settings}


@dataclass
class TrainState:
    """Where a fit stands after an epoch: what `fit(resume=...)` needs to continue it exactly.

    `phase` and `epoch` name the next epoch to run (phase index and epochs of that phase done; `phase` is
    len(phases) once the run is over); best-so-far, patience and `stopped` belong to that phase, or to the
    last one when the run is over. `rng` holds each rank's random states (torch, CUDA, numpy, python and
    the batch-order / augmentation generator).
    """

    plan: dict
    phase: int = 0
    epoch: int = 0
    epochs_done: int = 0  # epochs of the whole run
    steps: int = 0  # optimizer steps of the whole run (the EMA warm-up counts them)
    phase_seconds: float = 0.0  # training time spent in the current phase (a minutes-based phase goes on from it)
    history: list[dict] = field(default_factory=list)
    best: float = math.inf
    best_epoch: int = -1
    since_best: int = 0
    stopped: str = ""
    best_state: dict | None = None
    weights: dict = field(default_factory=dict)
    ema: dict = field(default_factory=dict)
    optimizer: dict | None = None  # AdamW's state (SAM's base optimizer's), None at a phase start
    rng: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain values and tensors (loadable with torch.load(weights_only=True))."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def planned_epochs(self) -> int:
        """Epochs the run's phases plan in all (a phase that ends early on its minutes or patience runs fewer)."""
        return sum(p["epochs"] for p in self.plan["phases"])

    def progress(self) -> dict:
        """Where the run stands, as a record (a resume state's and a checkpoint's description)."""
        return {"finished": self.phase >= len(self.plan["phases"]), "next_phase": self.phase + 1,
                "epochs_done_in_phase": self.epoch, "epochs_done": self.epochs_done,
                "planned_epochs": self.planned_epochs(), "steps": self.steps}

    def position(self) -> str:
        """Where the run stands, for logs."""
        phases = len(self.plan["phases"])
        if self.phase >= phases:
            return f"finished after {self.epochs_done} epoch(s) ({self.stopped})"
        return (f"phase {self.phase + 1}/{phases}, {self.epoch} epoch(s) of it done, run epoch {self.epochs_done} of "
                f"{self.planned_epochs()} planned, step {self.steps}")


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

    def start_phase(self, minutes: float, elapsed: float = 0.0) -> None:
        """Start the phase's clock, `elapsed` seconds into it (a resumed phase)."""
        self.phase_t0, self.phase_s = time.time() - elapsed, minutes * 60

    def phase_elapsed(self) -> float:
        return time.time() - self.phase_t0

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
    base = _base(opt)
    bar = tqdm(range(steps), desc=desc, leave=False, disable=not dist.is_main)
    for step in bar:
        progress = max((epoch * steps + step) / (phase.epochs * steps), _phase_progress(clock, dist))
        for group in base.param_groups:
            group["lr"] = phase.lr * lr_factor(progress, min(cfg.warmup_epochs / phase.epochs, 0.5))
        idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        x = to_input(train.images[idx], loop.device)
        if cfg.augment:
            x = augment(x, loop.gen, flip_prob=cfg.flip_prob, shift_prob=cfg.shift_prob)
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


def _base(opt) -> torch.optim.Optimizer:
    """The optimizer that holds the state and the learning rate: SAM's base optimizer, or `opt` itself."""
    return opt.base_optimizer if isinstance(opt, SAM) else opt


def _rng_state(loop: _Loop) -> dict:
    """This process's random states: torch (and the training GPU's), numpy, python, the run's generator."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(loop.device) if loop.device.type == "cuda" else None,
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate(), "generator": loop.gen.get_state()}


def _set_rng_state(state: dict, loop: _Loop) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and loop.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], loop.device)
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    loop.gen.set_state(state["generator"])


def _save_snapshot(state: TrainState, loop: _Loop, opt, save_state: Callable[[TrainState], None]) -> None:
    """save_state(a copy of `state` with the weights, EMA, optimizer and every rank's random states) on rank 0.

    Every rank must call it (the random states are gathered).
    """
    rng = loop.dist.all_gather_object(_rng_state(loop))
    if not loop.dist.is_main:
        return
    cpu = lambda tensors: {k: v.detach().cpu().clone() for k, v in tensors.items()}  # noqa: E731
    save_state(dataclasses.replace(state, history=[dict(r) for r in state.history], weights=cpu(loop.net.state_dict()),
                                   ema=cpu(loop.ema.module.state_dict()),
                                   optimizer=copy.deepcopy(_base(opt).state_dict()), rng=rng))


def _resume_from(resume: TrainState | None, loop: _Loop, plan: dict) -> TrainState:
    """The state a fit starts from: a fresh one, or `resume` (same plan) with its weights, EMA and counters loaded."""
    if resume is None:
        return TrainState(plan)
    if resume.plan != plan:
        flat = lambda p: {"phases": p.get("phases"), **p.get("fit", {})}  # noqa: E731
        asked, saved = flat(plan), flat(resume.plan)
        changed = sorted(k for k in asked.keys() | saved.keys() if asked.get(k) != saved.get(k))
        raise ResumeError(f"cannot resume: the run was planned with other settings ({', '.join(changed)}); "
                          "resume with the run's own phases and settings")
    loop.net.load_state_dict(resume.weights)
    loop.ema.module.load_state_dict(resume.ema)
    loop.epochs_done, loop.clock.steps = resume.epochs_done, resume.steps
    logger.info("Resuming the run: %s", resume.position())
    return dataclasses.replace(resume, history=list(resume.history))


def _continue_phase(state: TrainState, loop: _Loop, opt) -> None:
    """Inside a resumed fit's first phase: its optimizer state (mid-phase) and this rank's random states."""
    if state.epoch > 0:
        _base(opt).load_state_dict(state.optimizer)
    rank, world = loop.dist.rank, loop.dist.world
    if len(state.rng) != world:
        logger.warning("The run was saved by %d process(es) and resumes on %d: each rank's random stream restarts "
                       "from rank %d's, so the history will not repeat an uninterrupted run exactly",
                       len(state.rng), world, rank % len(state.rng))
    _set_rng_state(state.rng[rank % len(state.rng)], loop)


def _set_image_size(loop: _Loop, size: int) -> None:
    for spec_holder in (loop.net, loop.ema.module):
        spec_holder.spec = dataclasses.replace(spec_holder.spec, preprocess=spec_holder.spec.preprocess.with_size(size))


def fit(net: BoneAgeNet, data: Callable[[int], tuple[Split, Split]], cfg: FitConfig, phases: Sequence[Phase],
        device: torch.device, dist: DistContext = LOCAL, resume: TrainState | None = None,
        save_state: Callable[[TrainState], None] | None = None) -> FitResult:
    """Train `net` through `phases`; keep the best EMA weights (by the first head's validation score) of the last phase.

    `data(image_size)` returns the (train, val) splits at that size. The network's spec takes each
    phase's image size, so the saved checkpoint's input size is the last phase's. With `dist` of
    several processes (torchrun), the network is wrapped in DistributedDataParallel, each rank trains
    on its shard of every epoch (`batch_size` per rank), and rank 0 validates and keeps the clock for all.

    `save_state(state)` is called on rank 0 after every epoch that was not cut short by the run's time
    budget (`max_train_minutes`); `fit(..., resume=state)` with the same phases and settings (the budget
    may differ) continues from that epoch boundary exactly as the uninterrupted run would have gone on
    (one process; a phase limited by minutes goes on with the phase time already spent). A partly run
    epoch at the end of a budget is validated for this fit's result but not saved: the resumed run repeats it.
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
    state = _resume_from(resume, loop, fit_plan(cfg, phases))
    clock, primary, first = loop.clock, net.spec.heads[0], state.phase
    result = FitResult(state.best_state, pd.DataFrame(), state.best_epoch, state.best, state.stopped or "no phase ran",
                       0.0, phases[-1].image_size, first, first_epoch=state.epochs_done + 1)
    if first >= len(phases):
        _set_image_size(loop, phases[-1].image_size)
        logger.info("The run had already finished: nothing left to train")
    for p_index in range(first, len(phases)):
        phase = phases[p_index]
        if p_index > first and _run_over(clock, dist):  # the first phase always runs (at least one step)
            result.notes.append(f"phases {p_index + 1}-{len(phases)} skipped: time budget spent")
            break
        _set_image_size(loop, phase.image_size)
        freeze_blocks(net, phase.freeze_blocks)
        loop.model = _wrap(net, dist, device)
        train, val = data(phase.image_size)
        targets = {h: get_head(h).target(train.boneage, train.male.numpy(), net.spec) for h in net.spec.heads}
        opt = _optimizer(net, cfg, phase.lr)
        if resume is not None and p_index == first:
            _continue_phase(state, loop, opt)
        if state.epoch == 0:
            state.best, state.best_state, state.since_best = math.inf, None, 0
        clock.start_phase(phase.minutes, state.phase_seconds)
        stopped = f"completed {phase.epochs} epoch(s)"
        logger.info("Phase %d/%d: %d px, %d epoch(s), lr %g, %d frozen stage(s), %d train / %d val images%s",
                    p_index + 1, len(phases), phase.image_size, phase.epochs, phase.lr, phase.freeze_blocks,
                    len(train.images), len(val.images), f", {dist.world} processes" if dist.enabled else "")
        for epoch in range(state.epoch, phase.epochs):
            e0 = time.time()
            net.train()
            desc = f"phase {p_index + 1} {phase.image_size}px epoch {epoch + 1}/{phase.epochs}"
            train_loss, seen, why = _run_epoch(loop, opt, train, targets, phase, epoch, desc)
            cut = bool(why) and _run_over(clock, dist)  # the run's budget, not the phase's minutes: not saved
            scores = _validate_on_main(loop, val)
            row = {"epoch": loop.epochs_done, "phase": p_index + 1, "image_size": phase.image_size,
                   "train_loss": float(train_loss), "val_score": float(scores[primary]),
                   **{f"val_{h}": float(v) for h, v in scores.items()},
                   "lr": _base(opt).param_groups[0]["lr"],
                   "seconds": time.time() - e0, "images_per_s": seen / max(time.time() - e0, 1e-9)}
            state.history.append(row)
            logger.info("%s: train %.4f, val %s (%.0f img/s)", desc, train_loss,
                        ", ".join(f"{h} {v:.4f}" for h, v in scores.items()), row["images_per_s"])
            if scores[primary] < state.best:
                state.best, state.since_best, state.best_epoch = float(scores[primary]), 0, loop.epochs_done
                state.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in ema.module.state_dict().items()})
            else:
                state.since_best += 1
            if why:
                stopped = why
            elif state.since_best >= cfg.patience:
                stopped = f"early stop: no improvement for {cfg.patience} epochs"
            ended = bool(why) or state.since_best >= cfg.patience or epoch + 1 == phase.epochs
            if cut:
                if save_state is not None and loop.epochs_done == result.first_epoch:
                    logger.warning("The time budget ended inside this fit's first epoch: no epoch was saved, so a "
                                   "resume starts it again; give a chunk more time than one epoch")
                break
            state.phase, state.epoch = (p_index + 1, 0) if ended else (p_index, epoch + 1)
            state.phase_seconds = 0.0 if ended else _from_main(dist, clock.phase_elapsed)
            state.epochs_done, state.steps, state.stopped = loop.epochs_done, clock.steps, stopped if ended else ""
            if save_state is not None:
                _save_snapshot(state, loop, opt, save_state)
            if ended:
                break
        result.state_dict, result.best_score, result.stopped = state.best_state, state.best, stopped
        result.best_epoch, result.image_size, result.phases_run = state.best_epoch, phase.image_size, p_index + 1
        logger.info("Phase %d ended: %s; best %s %.4f", p_index + 1, stopped, primary, state.best)
        if _run_over(clock, dist):
            result.stopped = f"time budget of {cfg.max_train_minutes:g} min reached in phase {p_index + 1}"
            if p_index + 1 < len(phases):
                result.notes.append(f"phases {p_index + 2}-{len(phases)} skipped: time budget spent")
            break
    result.history, result.seconds = pd.DataFrame(state.history), time.time() - clock.t0
    result.finished = state.phase >= len(phases)
    if result.notes:
        logger.warning("Training stopped early: %s", "; ".join(result.notes))
    return result
