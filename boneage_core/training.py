"""Training and batched inference for BoneAgeNet: on-device augmentation, EMA, SAM, cosine warm-up, early stopping."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .models import BoneAgeNet

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


def augment(x: torch.Tensor, generator: torch.Generator | None = None, max_rotation: float = 15.0,
            scale: tuple[float, float] = (0.9, 1.1), max_shift: float = 0.06,
            brightness: float = 0.1, contrast: tuple[float, float] = (0.85, 1.15)) -> torch.Tensor:
    """Random rotation, scale, shift, brightness and contrast on a (B, 1, H, W) batch in [0, 1], on its device."""
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
    return ((out - mean) * c + mean + br).clamp(0.0, 1.0)


def tta_views(x: torch.Tensor) -> list[torch.Tensor]:
    """Deterministic test-time views: the image, slightly zoomed in, slightly zoomed out."""
    views = [x]
    for s in (0.94, 1.06):
        theta = torch.tensor([[s, 0.0, 0.0], [0.0, s, 0.0]], dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        views.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    return views


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _to_input(batch_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = batch_u8.to(device, non_blocking=True).unsqueeze(1).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


def _autocast(device: torch.device, cpu_bf16: bool = False):
    enabled = device.type == "cuda" or (device.type == "cpu" and cpu_bf16)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def predict_outputs(net: BoneAgeNet, images: torch.Tensor, male: torch.Tensor, device: torch.device,
                    batch_size: int = 64, tta: bool = False, progress: bool = False) -> np.ndarray:
    """Raw network outputs for a uint8 (N, S, S) image tensor: scaled ages (N,) or logits (N, K)."""
    net.eval()
    outs = []
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, desc="predict", disable=not progress or len(starts) < 3):
        x = _to_input(images[i:i + batch_size], device)
        m = male[i:i + batch_size].to(device)
        with _autocast(device):
            views = tta_views(x) if tta else [x]
            ys = [net(v, m).float() for v in views]
        y = torch.stack(ys).mean(0) if net.spec.task == "regression" else torch.stack(
            [torch.log_softmax(v, dim=1) for v in ys]).mean(0)
        outs.append(y.cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0,))


@dataclass
class FitResult:
    """Outcome of a training run: the best (EMA) weights, per-epoch history, and why it stopped."""

    state_dict: dict
    history: pd.DataFrame
    best_epoch: int
    best_score: float
    stopped: str
    seconds: float


def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(warmup_steps, 1)
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return f


def _loss_fn(task: str):
    return (lambda out, y: F.l1_loss(out.float(), y)) if task == "regression" else (
        lambda out, y: F.cross_entropy(out.float(), y, label_smoothing=0.05))


def _val_score(net: BoneAgeNet, images, male, target, device, batch_size) -> tuple[float, float]:
    """(validation loss, selection score: lower is better) for the EMA model."""
    out = torch.from_numpy(predict_outputs(net, images, male, device, batch_size))
    if net.spec.task == "regression":
        mae_months = (out - target).abs().mean().item() * net.spec.age_std
        return F.l1_loss(out, target).item(), mae_months
    loss = F.nll_loss(out, target).item()
    return loss, loss


def _over_budget(elapsed_s: float, last_epoch_s: float, max_minutes: float) -> bool:
    """True when another epoch as long as the last one would end past the limit (0 = no limit)."""
    return bool(max_minutes) and (elapsed_s + last_epoch_s) / 60 > max_minutes


def fit(net: BoneAgeNet, train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor, torch.Tensor], cfg, device: torch.device) -> FitResult:
    """Train `net` on (uint8 images, male, target) tensors; keep the best EMA weights by validation score.

    Regression targets are scaled ages (float); classification targets are stage indices (long).
    """
    from timm.utils import ModelEmaV3

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net.to(device).to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sam":
        opt = SAM(groups, torch.optim.AdamW, rho=cfg.sam_rho, lr=cfg.lr)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    steps_per_epoch = max(1, len(train[0]) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt.base_optimizer if isinstance(opt, SAM) else opt,
        _lr_lambda(steps_per_epoch * cfg.epochs, int(steps_per_epoch * cfg.warmup_epochs)))
    ema = ModelEmaV3(net, decay=cfg.ema_decay, use_warmup=True)
    loss_fn = _loss_fn(net.spec.task)
    best, best_epoch, best_state, since_best = float("inf"), -1, None, 0
    history, stopped, t0 = [], "completed all epochs", time.time()
    for epoch in range(cfg.epochs):
        net.train()
        order = torch.randperm(len(train[0]), generator=gen)
        running, seen, e0 = 0.0, 0, time.time()
        bar = tqdm(range(steps_per_epoch), desc=f"{net.spec.task} epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for step in bar:
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x = _to_input(train[0][idx], device)
            if cfg.augment:
                x = augment(x, gen)
            m, y = train[1][idx].to(device), train[2][idx].to(device)

            def closure() -> torch.Tensor:
                with _autocast(device, cfg.cpu_bf16):
                    loss = loss_fn(net(x, m), y)
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
            sched.step()
            ema.update(net, step=epoch * steps_per_epoch + step)
            running += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        val_loss, score = _val_score(ema.module, *val, device, cfg.batch_size * 2)
        row = {"epoch": epoch + 1, "train_loss": running / max(seen, 1), "val_loss": val_loss,
               "val_score": score, "lr": sched.get_last_lr()[0], "seconds": time.time() - e0,
               "images_per_s": seen / max(time.time() - e0, 1e-9)}
        history.append(row)
        logger.info("%s epoch %d: train %.4f val %.4f score %.4f (%.0f img/s)", net.spec.task, epoch + 1,
                    row["train_loss"], val_loss, score, row["images_per_s"])
        if score < best:
            best, best_epoch, since_best = score, epoch + 1, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in ema.module.state_dict().items()})
        else:
            since_best += 1
        if since_best >= cfg.patience:
            stopped = f"early stop: no improvement for {cfg.patience} epochs"
            break
        if epoch + 1 < cfg.epochs and _over_budget(time.time() - t0, row["seconds"], cfg.max_train_minutes):
            stopped = f"time limit of {cfg.max_train_minutes:g} min: no room for another epoch"
            break
    return FitResult(best_state or net.state_dict(), pd.DataFrame(history), best_epoch, best, stopped,
                     time.time() - t0)
