"""The one inference path: device, autocast, input conversion, test-time views and the combination of views and members.

Training's validation, ``evaluate``, ``Predictor`` (app, CLI, batch) and Grad-CAM all feed networks
through :func:`prepare` / :func:`to_input` and read them through :func:`member_outputs` and
:func:`ensemble_outputs`. A member is a ``BoneAgeNet`` (eager PyTorch) or a ``runtime.CompiledMember``
(OpenVINO, what ``runtime.load_member`` gives on the CPU): both answer ``infer(x, male)``, the one network
pass. This module never imports the training code.
"""

from __future__ import annotations

import functools
import logging
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .heads import combine, get_head
from .preprocess import grey_entropy, input_grain, prepare
from .runtime import Member, torch_ops_beside
from .views import NO_TTA, TTA_SCALES, Views, as_views

logger = logging.getLogger(__name__)

#: Images per inference batch on a GPU, and on the CPU, where small batches keep the activations in cache
#: (docs/ablations.md section 12: on the 2-core AVX2 machine batches of 4 ran 2.7-3.1x faster than batches of 64).
GPU_INFERENCE_BATCH, CPU_INFERENCE_BATCH = 64, 4


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch understands it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 / AMX); elsewhere bf16 is emulated, ~17x slower."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast(device: torch.device, cpu_bf16: bool = False):
    """bf16 autocast on CUDA always; on the CPU only when asked and the CPU has bf16 units (training on AMX CPUs)."""
    enabled = device.type == "cuda" or (device.type == "cpu" and cpu_bf16 and cpu_has_bf16())
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def inference_batch(device: torch.device) -> int:
    """Images per forward pass when only predicting (no gradients) on this device."""
    return GPU_INFERENCE_BATCH if device.type == "cuda" else CPU_INFERENCE_BATCH


def to_input(batch_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, S, S) uint8 -> (B, 1, S, S) float in [0, 1] on the device, channels_last."""
    x = batch_u8.to(device, non_blocking=True).unsqueeze(1).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


def tta_views(x: torch.Tensor, views: Views = TTA_SCALES) -> list[torch.Tensor]:
    """The test-time views of a batch, one per zoom factor of the view set (views.as_views; 1.0 is the image)."""
    out = []
    for s in views:
        if s == 1.0:
            out.append(x)
            continue
        grid = _zoom_grid(s, tuple(x.shape[1:]), x.dtype, x.device).expand(x.shape[0], -1, -1, -1)
        out.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    return out


@functools.lru_cache(maxsize=16)
def _zoom_grid(scale: float, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (1, H, W, 2) sampling grid of a zoom by `scale` for images of `shape` (C, H, W): the same for every image,
    so it is made once per zoom, size, dtype and device (building it cost as much as sampling with it). An ordinary
    tensor without gradient even when first asked for under inference mode; grid_sample only reads it."""
    with torch.inference_mode(False), torch.no_grad():
        theta = torch.tensor([[[scale, 0.0, 0.0], [0.0, scale, 0.0]]], dtype=dtype, device=device)
        return F.affine_grid(theta, [1, *shape], align_corners=False)


@torch.no_grad()
def member_outputs(net: Member, images: torch.Tensor, male: torch.Tensor, device: torch.device,
                   views: Views = NO_TTA, batch_size: int | None = None, progress: bool = False,
                   cpu_bf16: bool = False, features: list[np.ndarray] | None = None) -> dict[str, list[np.ndarray]]:
    """Decoded outputs of one network for uint8 (N, S, S) images: {head: [one array per view of `views`]}.

    With a `features` list, the gate features of the unzoomed view (:func:`gate_features`) are appended to
    it per batch, from the same backbone pass as the outputs. `batch_size` defaults to :func:`inference_batch`.
    """
    net.eval()
    spec = net.spec
    views = as_views(views)  # validated: holds 1.0, the view the gate features come from
    batch_size = batch_size or inference_batch(device)
    per_view: dict[str, list[list[np.ndarray]]] = {h: [] for h in spec.heads}
    starts = range(0, len(images), batch_size)
    with torch_ops_beside(net):
        for i in tqdm(starts, desc="predict", disable=not progress or len(starts) < 3):
            x = to_input(images[i:i + batch_size], device)
            m = male[i:i + batch_size].to(device)
            for v, (scale, view) in enumerate(zip(views, tta_views(x, views))):
                with autocast(device, cpu_bf16):
                    pooled, texture, out = net.infer(view, m)
                if scale == 1.0 and features is not None:
                    features.append(gate_features(pooled, texture, images[i:i + batch_size]))
                for head in spec.heads:
                    decoded = get_head(head).decode(out[head], spec)
                    if v == len(per_view[head]):
                        per_view[head].append([])
                    per_view[head][v].append(decoded)
    return {h: [np.concatenate(chunks) for chunks in by_view] for h, by_view in per_view.items()}


def ensemble_outputs(members: Sequence[Mapping[str, list[np.ndarray]]]) -> dict[str, np.ndarray]:
    """Every view of every member combined per head (members without a head do not vote on it)."""
    heads = list(dict.fromkeys(h for m in members for h in m))
    return {h: combine([view for m in members for view in m.get(h, [])]) for h in heads}


@torch.no_grad()
def member_features(net: Member, images: torch.Tensor | np.ndarray, device: torch.device,
                    batch_size: int | None = None, progress: bool = False) -> np.ndarray:
    """Gate features (N, F + 2C + 2) of uint8 (N, S, S) model inputs, one view (what the input gate reads)."""
    net.eval()
    batch_size = batch_size or inference_batch(device)
    images = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    starts = range(0, len(images), batch_size)
    out = []
    with torch_ops_beside(net):
        for i in tqdm(starts, desc="features", disable=not progress or len(starts) < 3):
            x = to_input(images[i:i + batch_size], device)
            pooled, texture, _ = net.infer(x, torch.zeros(len(x), dtype=torch.long, device=device))
            out.append(gate_features(pooled, texture, images[i:i + batch_size]))
    return np.concatenate(out) if out else np.zeros((0, 0))


def image_gate_features(net: Member, gray: np.ndarray, device: torch.device) -> np.ndarray:
    """Gate features (1, F + 2C + 2) of one float gray image, prepared like every model input (:func:`prepare`) but
    never smoothed: the gate decides on the image as given (a grainy photograph smoothed looked like a film)."""
    return member_features(net, prepare(gray, net.spec.preprocess, grainy=False)[None], device)


def gate_features(pooled: torch.Tensor, texture: torch.Tensor, images: torch.Tensor | np.ndarray) -> np.ndarray:
    """What the input gate reads, as float64: the pooled features (B, F), the texture statistics (B, 2C), then the
    grain and the grey-level entropy of the uint8 inputs `images` (B, S, S) (:func:`preprocess.input_grain`,
    :func:`preprocess.grey_entropy`)."""
    pixels = images.cpu().numpy() if isinstance(images, torch.Tensor) else images
    deep = torch.cat([pooled.float(), texture.float()], dim=1).cpu().numpy().astype(np.float64)
    return np.concatenate([deep, input_grain(pixels)[:, None], grey_entropy(pixels)[:, None]], axis=1)
