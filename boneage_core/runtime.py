"""Runtime of a member's inference pass: eager PyTorch, or OpenVINO on the CPU, compiled once and cached on disk.

Only the network pass of :mod:`boneage_core.inference` changes: :func:`load_member` returns a
:class:`CompiledMember` on the CPU, whose ``infer`` replaces ``BoneAgeNet.infer`` (``embed`` + ``read_heads``);
preparation, views, decoding, training and Grad-CAM stay on PyTorch. A compiled member builds its PyTorch network
only when something needs it (Grad-CAM, a conversion), so serving predictions holds no PyTorch copy of the weights
and does not import timm (about 0.2 GB of memory). The OpenVINO model is converted from the
checkpoint on first use and saved in the cache folder (:func:`cache_root`) under a key made of the checkpoint's
sha256, the OpenVINO version and the input size, with a JSON sidecar recording the checkpoint's hash and the
hashes of the saved files; a cached model whose record does not match is rebuilt (logged), never used.
``BONEAGE_RUNTIME=torch`` forces eager PyTorch.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, Union

import numpy as np
import torch
from torch import nn

from .checkpoint import file_sha256, read_hashed, read_payload
from .models import BoneAgeNet, ModelSpec, net_from_payload, payload_meta

logger = logging.getLogger(__name__)

TORCH, OPENVINO = "torch", "openvino"
RUNTIMES = (TORCH, OPENVINO)
#: Environment: the runtime (torch | openvino, default openvino on the CPU), the cache root
#: (default ~/.cache/boneage; the OpenVINO models go to its openvino/ folder) and OpenVINO's precision.
RUNTIME_ENV, CACHE_ENV, PRECISION_ENV = "BONEAGE_RUNTIME", "BONEAGE_CACHE", "BONEAGE_OPENVINO_PRECISION"
#: f32 matches PyTorch float32 (ages within 5e-4 months on 200 test images); bf16 (AMX / AVX512-BF16 CPUs) is faster
#: but moved ages by up to 7 months and changed 2 % of stages (README, "CPU runtime: OpenVINO").
F32, BF16 = "f32", "bf16"
PRECISIONS = (F32, BF16)
#: Version of what the cache holds (the graph's inputs and outputs, the sidecar); a change rebuilds every entry.
CACHE_FORMAT = 1
MODEL_XML, MODEL_BIN, SIDECAR = "member.xml", "member.bin", "member.json"
#: The graph's outputs before the heads, in order.
FEATURE_OUTPUTS = ("pooled", "texture")

Member = Union[BoneAgeNet, "CompiledMember"]


class MemberGraph(nn.Module):
    """A network's inference pass as one graph: (x (B, 1, S, S) float, male (B,) long) -> (pooled, texture, one
    raw output per head, in ``spec.heads`` order); what OpenVINO converts."""

    def __init__(self, net: BoneAgeNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, male: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pooled, texture, out = self.net.infer(x, male)
        return (pooled, texture, *(out[h] for h in self.net.spec.heads))


class CompiledMember:
    """A BoneAgeNet whose inference pass (:meth:`infer`) runs as a compiled OpenVINO model on the CPU.

    Its PyTorch network (``net``, for what needs gradients: Grad-CAM) is built by `build_net` on first use and
    kept. One infer request is shared under a lock, so concurrent callers (app sessions) take turns.
    """

    def __init__(self, spec: ModelSpec, build_net: Callable[[], BoneAgeNet], compiled, precision: str,
                 cache_dir: Path, net: BoneAgeNet | None = None):
        self._spec = spec
        self._build_net = build_net
        self._net = net
        self.compiled = compiled
        self.precision = precision
        self.cache_dir = cache_dir
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        self._net_lock = threading.Lock()

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def net(self) -> BoneAgeNet:
        """The PyTorch network (float32, eval mode), built from the checkpoint the first time it is asked for."""
        with self._net_lock:
            if self._net is None:
                self._net = self._build_net()
            return self._net

    @property
    def has_net(self) -> bool:
        """Whether the PyTorch network has been built (serving predictions alone never builds it)."""
        return self._net is not None

    def eval(self) -> "CompiledMember":
        """Already an inference model (for callers that put a network in eval mode)."""
        return self

    def infer(self, x: torch.Tensor, male: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """As ``BoneAgeNet.infer``: pooled features (B, F), texture statistics (B, 2C), {head: raw output}."""
        inputs = [np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32),
                  np.ascontiguousarray(male.detach().cpu().numpy(), dtype=np.int64)]
        with self._lock:
            results = self._request.infer(inputs)  # copies of the outputs (share_outputs=False)
            outputs = [torch.from_numpy(np.asarray(results[i])) for i in range(len(results))]
        pooled, texture, *heads = outputs
        return pooled, texture, dict(zip(self.spec.heads, heads))


_threads_lock = threading.Lock()
_holds = 0  # holds in progress, over all threads
_configured_threads = 0  # torch's thread count outside any hold (set when the first hold begins)
_thread_holds = threading.local()  # .depth: this thread's nested holds


@contextlib.contextmanager
def torch_ops_beside(member: Member) -> Iterator[None]:
    """While a compiled member's passes run, torch's own small operations around them (input conversion, zoomed
    views, decoding) run on one thread: torch's OpenMP workers keep spinning after each operation and take the cores
    from OpenVINO's threads (README, "CPU runtime: OpenVINO"). torch's count is per thread (a new thread starts with
    the last one set), so each thread sets its own and, when its outermost hold ends, puts back the count configured
    outside any hold. A PyTorch member is left as it is."""
    global _holds, _configured_threads
    if not isinstance(member, CompiledMember):
        yield
        return
    depth = getattr(_thread_holds, "depth", 0)
    with _threads_lock:
        if _holds == 0:
            _configured_threads = torch.get_num_threads()
        _holds += 1
    _thread_holds.depth = depth + 1
    if depth == 0:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        _thread_holds.depth = depth
        with _threads_lock:
            _holds -= 1
            configured = _configured_threads
        if depth == 0:
            torch.set_num_threads(configured)


def configured_threads() -> int:
    """torch's thread count as configured (not the one :func:`torch_ops_beside` holds it to while passes run)."""
    with _threads_lock:
        return _configured_threads if _holds else torch.get_num_threads()


def torch_net(member: Member) -> BoneAgeNet:
    """The PyTorch network of a member (itself when it runs on PyTorch): for gradients and for its modules."""
    return member.net if isinstance(member, CompiledMember) else member


def runtime_of(member: Member) -> str:
    """'openvino (f32)' or 'torch': how a member's inference pass runs."""
    return f"{OPENVINO} ({member.precision})" if isinstance(member, CompiledMember) else TORCH


def resolve_runtime(device: torch.device, runtime: str | None = None) -> str:
    """The runtime of inference on `device`: `runtime`, else $BONEAGE_RUNTIME, else openvino; torch off the CPU."""
    name = (runtime or os.environ.get(RUNTIME_ENV) or OPENVINO).strip().lower()
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r} (from {'the argument' if runtime else RUNTIME_ENV}); "
                         f"choose one of {', '.join(RUNTIMES)}")
    if name == OPENVINO and device.type == "cpu" and importlib.util.find_spec("openvino") is None:
        logger.warning("openvino is not installed (requirements.txt): inference runs on eager PyTorch")
        return TORCH
    return name if device.type == "cpu" else TORCH


def resolve_precision(precision: str | None = None) -> str:
    """OpenVINO's inference precision: `precision`, else $BONEAGE_OPENVINO_PRECISION, else f32."""
    name = (precision or os.environ.get(PRECISION_ENV) or F32).strip().lower()
    if name not in PRECISIONS:
        raise ValueError(f"unknown OpenVINO precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return name


def cache_root() -> Path:
    """Where converted models are kept: $BONEAGE_CACHE/openvino, else ~/.cache/boneage/openvino."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base) if base else Path.home() / ".cache" / "boneage") / "openvino"


def openvino_version() -> str:
    import openvino

    return openvino.get_version()


def cache_key(checkpoint_sha256: str, input_size: int, version: str) -> str:
    """The cache folder's name: checkpoint hash, input size, OpenVINO version and cache format."""
    safe_version = re.sub(r"[^0-9A-Za-z.]+", "_", version)
    return f"{checkpoint_sha256[:24]}-{input_size}px-ov{safe_version}-f{CACHE_FORMAT}"


def _record(spec: ModelSpec, checkpoint_sha256: str, version: str) -> dict:
    """What the sidecar must say for a cached model to be used (the file hashes are added when it is saved)."""
    return {"format": CACHE_FORMAT, "checkpoint_sha256": checkpoint_sha256, "openvino": version,
            "input_size": spec.preprocess.image_size, "outputs": [*FEATURE_OUTPUTS, *spec.heads]}


def stale_reason(folder: Path, expected: dict) -> str | None:
    """Why the cached model in `folder` must not be used (None when its sidecar and files match `expected`)."""
    sidecar = folder / SIDECAR
    if not sidecar.is_file():
        return f"no {SIDECAR}"
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable {SIDECAR}: {exc}"
    if not isinstance(record, dict):
        return f"{SIDECAR} is not a JSON object"
    for key, value in expected.items():
        if record.get(key) != value:
            return f"{SIDECAR} records {key} = {record.get(key)!r}, expected {value!r}"
    files = record.get("files")
    if not isinstance(files, dict) or set(files) != {MODEL_XML, MODEL_BIN}:
        return f"{SIDECAR} does not record the hashes of {MODEL_XML} and {MODEL_BIN}"
    for name, digest in files.items():
        if not (folder / name).is_file():
            return f"{name} is missing"
        if file_sha256(folder / name) != digest:
            return f"{name} does not match the sha256 its sidecar records"
    return None


def convert_member(net: BoneAgeNet):
    """The OpenVINO model of a network's inference pass (:class:`MemberGraph`): x (B, 1, S, S) f32, male (B,) i64.

    The graph is traced once without torch's re-run check (the numerics tests compare it with the network), then
    given a dynamic batch and the checkpoint's input size.
    """
    import openvino

    size = net.spec.preprocess.image_size
    example = (torch.rand(2, 1, size, size), torch.tensor([0, 1]))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=FutureWarning)  # what OpenVINO reads
        traced = torch.jit.trace(MemberGraph(net).eval(), example, check_trace=False)
        model = openvino.convert_model(traced, example_input=example)
    x, male = model.inputs
    model.reshape({x: openvino.PartialShape([-1, 1, size, size]), male: openvino.PartialShape([-1])})
    return model


def save_member(model, folder: Path, record: dict) -> None:
    """Save a converted model into `folder` (model files first, each moved into place whole, the sidecar last)."""
    import openvino

    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))
    try:
        openvino.save_model(model, staging / MODEL_XML, compress_to_fp16=False)  # f32 weights, as the checkpoint's
        files = {}
        for name in (MODEL_XML, MODEL_BIN):
            files[name] = file_sha256(staging / name)
            os.replace(staging / name, folder / name)
        (staging / SIDECAR).write_text(json.dumps({**record, "files": files,
                                                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                                  indent=2) + "\n")
        os.replace(staging / SIDECAR, folder / SIDECAR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def _core():
    import openvino

    return openvino.Core()


def compile_member(net: BoneAgeNet | Callable[[], BoneAgeNet], checkpoint_sha256: str, precision: str | None = None,
                   threads: int | None = None, root: Path | None = None,
                   spec: ModelSpec | None = None) -> CompiledMember:
    """The network compiled by OpenVINO for the CPU, from the cache when its record matches, else converted and saved.

    `net` is the network, or a function that builds it with its `spec` given: then it is built only when the cache
    must be (re)built or when :attr:`CompiledMember.net` is asked for. Threads default to torch's
    (:func:`configured_threads`); the latency hint suits single images.
    """
    if isinstance(net, BoneAgeNet):
        built: BoneAgeNet | None = net
        spec, build_net = net.spec, (lambda: net)
    elif spec is None:
        raise ValueError("compile_member: a function building the network needs its spec")
    else:
        built, build_net = None, net
    precision = resolve_precision(precision)
    version = openvino_version()
    record = _record(spec, checkpoint_sha256, version)
    folder = (root or cache_root()) / cache_key(checkpoint_sha256, record["input_size"], version)
    reason = stale_reason(folder, record) if folder.exists() else "not cached"
    core = _core()
    t0 = time.perf_counter()
    if reason is None:
        model = core.read_model(folder / MODEL_XML)
    else:
        log = logger.info if reason == "not cached" else logger.warning
        log("Converting %s for OpenVINO into %s (%s)", checkpoint_sha256[:12], folder, reason)
        built = built or build_net()
        model = convert_member(built)
        save_member(model, folder, record)
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": int(threads or configured_threads())}
    compiled = core.compile_model(model, "CPU", config)
    logger.info("OpenVINO model %s ready in %.2f s (%s, %s threads)", folder.name, time.perf_counter() - t0,
                precision, config["INFERENCE_NUM_THREADS"])
    return CompiledMember(spec, build_net, compiled, precision, folder, built)


def load_member(path: str | os.PathLike, device: str | torch.device = "cpu", runtime: str | None = None,
                data: bytes | None = None, sha256: str | None = None) -> tuple[Member, dict]:
    """A checkpoint ready for inference on `device` (:func:`resolve_runtime`) and its metadata (as models.load_model;
    `data` and `sha256` when the caller has read and hashed the file already). On OpenVINO the PyTorch network is
    built only when needed (:class:`CompiledMember`); the checkpoint's weights are kept for that."""
    device = torch.device(device)
    if data is None or sha256 is None:
        data, sha256 = read_hashed(path)
    payload = read_payload(path, data)
    meta = payload_meta(payload, sha256)
    if resolve_runtime(device, runtime) == TORCH:
        return net_from_payload(payload, device), meta
    return compile_member(functools.partial(net_from_payload, payload), sha256,
                          spec=ModelSpec.from_dict(payload["spec"])), meta
