"""runtime: the members' inference pass through OpenVINO matches PyTorch; the converted models are cached by hash."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from boneage_core import runtime
from boneage_core.data import attach_paths, read_labels
from boneage_core.ensemble import Ensemble
from boneage_core.evaluate import cnn_columns
from boneage_core.heads import AGE, CNN, STAGE, system_column
from boneage_core.inference import member_features, member_outputs
from boneage_core.models import INIT_SCRATCH, BoneAgeNet, ModelSpec, create_model, save_model
from boneage_core.predictor import Predictor
from boneage_core.preprocess import PreprocessSpec
from boneage_core.runtime import (CACHE_ENV, MODEL_BIN, MODEL_XML, OPENVINO, RUNTIME_ENV, SIDECAR, TORCH,
                                  CompiledMember, cache_key, compile_member, configured_threads, load_member,
                                  resolve_precision, resolve_runtime, runtime_of, torch_net, torch_ops_beside)
from boneage_core.views import TTA_SCALES

SIZE = 32
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # compiled members take torch's thread count

CPU = torch.device("cpu")
SHA = "a" * 64  # the small network's stand-in checkpoint hash
#: The issue's numerics target: OpenVINO's ages within 0.05 months of PyTorch float32, the same stage.
MAX_AGE_DIFF = 0.05


def _net(seed: int = 0) -> BoneAgeNet:
    torch.manual_seed(seed)
    spec = ModelSpec(heads=(AGE, STAGE), sex_embedding_dim=4, preprocess=PreprocessSpec(image_size=SIZE),
                     age_mean=120.0, age_std=40.0)
    return create_model(spec, INIT_SCRATCH)[0].eval()


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (7, SIZE, SIZE), dtype=torch.uint8, generator=g),
            torch.tensor([0, 1, 1, 0, 1, 0, 0]))


def _head_outputs(member, images) -> np.ndarray:
    x, male = images
    with torch.no_grad():
        return member.infer(x.unsqueeze(1).float() / 255, male)[2][AGE].numpy()


@pytest.fixture(scope="module")
def net() -> BoneAgeNet:
    return _net()


@pytest.fixture(scope="module")
def built(net, tmp_path_factory) -> CompiledMember:
    """The small network compiled once (each conversion takes seconds); tests copy its cache folder."""
    return compile_member(net, SHA, root=tmp_path_factory.mktemp("built"))


@pytest.fixture
def cache(tmp_path, monkeypatch, built) -> Path:
    """$BONEAGE_CACHE in a fresh folder holding a copy of the built entry; returns its openvino/ folder."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    root = runtime.cache_root()
    shutil.copytree(built.cache_dir, root / built.cache_dir.name)
    return root


def test_the_runtime_is_openvino_on_the_cpu_unless_asked(monkeypatch, tmp_path):
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    assert resolve_runtime(CPU) == OPENVINO
    assert resolve_runtime(CPU, TORCH) == TORCH
    assert resolve_runtime(torch.device("cuda")) == TORCH  # CUDA stays on torch
    monkeypatch.setenv(RUNTIME_ENV, "torch")
    assert resolve_runtime(CPU) == TORCH
    monkeypatch.setenv(RUNTIME_ENV, "tensorrt")
    with pytest.raises(ValueError, match=RUNTIME_ENV):
        resolve_runtime(CPU)
    assert resolve_precision() == "f32" and resolve_precision("BF16") == "bf16"
    with pytest.raises(ValueError):
        resolve_precision("fp8")
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert runtime.cache_root() == tmp_path / ".cache" / "boneage" / "openvino"


def test_a_compiled_member_answers_like_the_network(built, net, images):
    """Same pooled features, texture statistics and decoded heads, on every batch size (dynamic batch) and view."""
    assert built.spec is net.spec and torch_net(built) is net and torch_net(net) is net
    assert runtime_of(built) == "openvino (f32)" and runtime_of(net) == TORCH
    x, male = images
    for b in (1, 4, 7):
        xb = x[:b].unsqueeze(1).float() / 255
        with torch.no_grad():
            expected = net.infer(xb, male[:b])
        got = built.infer(xb, male[:b])
        for a, e in zip(got[:2], expected[:2], strict=True):
            np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=1e-4, atol=1e-5)
        for head in (AGE, STAGE):
            np.testing.assert_allclose(got[2][head].numpy(), expected[2][head].numpy(), rtol=1e-4, atol=1e-5)
    eager = member_outputs(net, x, male, CPU, views=TTA_SCALES, batch_size=3)
    compiled = member_outputs(built, x, male, CPU, views=TTA_SCALES, batch_size=3)
    for head in (AGE, STAGE):
        for a, e in zip(compiled[head], eager[head], strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(member_features(built, x, CPU), member_features(net, x, CPU), rtol=1e-4, atol=1e-5)


def test_torch_ops_run_on_one_thread_beside_compiled_passes_and_the_count_comes_back(built, net, images,
                                                                                   monkeypatch):
    """torch's OpenMP workers spin after each operation and take the cores from OpenVINO's threads: while a compiled
    member's passes run, torch is held to one thread; the configured count is what compiling reads, and it is restored
    once the last (nested) hold ends. A PyTorch member keeps torch's threads."""
    x, male = images
    seen: list[int] = []

    def spy(member):
        infer = member.infer

        def counted(*args):
            seen.append(torch.get_num_threads())
            return infer(*args)
        return counted

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(built, "infer", spy(built))
        member_outputs(built, x, male, CPU, views=TTA_SCALES, batch_size=3)
        member_features(built, x, CPU)
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
        with torch_ops_beside(built):
            with torch_ops_beside(built):
                assert torch.get_num_threads() == 1 and configured_threads() == 2
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2 and configured_threads() == 2
        seen.clear()
        monkeypatch.setattr(net, "infer", spy(net))
        member_outputs(net, x, male, CPU, batch_size=3)
        assert seen and set(seen) == {2}
    finally:
        torch.set_num_threads(before)


def test_the_hold_gives_each_thread_the_configured_count_back(built):
    """torch's count is per thread (a new thread starts with the last one set): two threads whose holds overlap each
    get the configured count back when their own hold ends, in either order, and so does a thread started during
    another's hold once its own hold ends."""
    import threading

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen: dict[str, int] = {}
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        with torch_ops_beside(built):
            a_in.set()
            b_in.wait(10)
        a_out.set()
        seen["first after"] = torch.get_num_threads()

    def second():
        a_in.wait(10)
        with torch_ops_beside(built):
            seen["second during"] = torch.get_num_threads()
            b_in.set()
            a_out.wait(10)
            seen["configured during"] = configured_threads()
        seen["second after"] = torch.get_num_threads()

    try:
        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert seen == {"second during": 1, "configured during": 2, "first after": 2, "second after": 2}
    finally:
        torch.set_num_threads(before)


def test_a_matching_cache_is_used_without_converting(cache, net, monkeypatch):
    monkeypatch.setattr(runtime, "convert_member", lambda _net: pytest.fail("converted again"))
    member = compile_member(net, SHA)
    assert member.cache_dir.parent == cache
    assert member.compiled.get_property("INFERENCE_NUM_THREADS") == torch.get_num_threads() == 1
    assert member.compiled.get_property("PERFORMANCE_HINT") == "LATENCY"
    assert member.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    assert compile_member(net, SHA, threads=2).compiled.get_property("INFERENCE_NUM_THREADS") == 2
    record = json.loads((member.cache_dir / SIDECAR).read_text())
    assert record["checkpoint_sha256"] == SHA and record["input_size"] == SIZE
    assert record["outputs"] == ["pooled", "texture", AGE, STAGE] and record["openvino"] == runtime.openvino_version()
    assert set(record["files"]) == {MODEL_XML, MODEL_BIN}
    assert not list(cache.glob(".build-*"))  # the staging folder is gone


@pytest.mark.parametrize("damage", ["edited sidecar", "edited xml", "corrupted bin"])
def test_a_stale_cache_is_rebuilt_and_logged(cache, net, images, caplog, damage):
    folder = cache / runtime.cache_key(SHA, SIZE, runtime.openvino_version())
    sidecar = folder / SIDECAR
    if damage == "edited sidecar":
        record = json.loads(sidecar.read_text())
        record["checkpoint_sha256"] = "e" * 64
        sidecar.write_text(json.dumps(record))
    elif damage == "edited xml":
        (folder / MODEL_XML).write_text((folder / MODEL_XML).read_text() + "<!-- edited -->\n")
    else:
        data = bytearray((folder / MODEL_BIN).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / MODEL_BIN).write_bytes(bytes(data))
    assert runtime.stale_reason(folder, runtime._record(net.spec, SHA, runtime.openvino_version())) is not None
    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        rebuilt = compile_member(net, SHA)
    assert rebuilt.cache_dir == folder
    assert any("Converting" in r.getMessage() and str(folder) in r.getMessage() for r in caplog.records), damage
    assert runtime.stale_reason(folder, runtime._record(net.spec, SHA, runtime.openvino_version())) is None
    np.testing.assert_allclose(_head_outputs(rebuilt, images), _head_outputs(net, images), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_the_cache_key_changes_with_the_checkpoint(cache, tmp_path, images, monkeypatch):
    assert len({cache_key("a" * 64, 256, "2026.4.1"), cache_key("b" * 64, 256, "2026.4.1"),
                cache_key("a" * 64, 288, "2026.4.1"), cache_key("a" * 64, 256, "2026.5.0")}) == 4
    path = tmp_path / "member.pt"
    save_model(path, _net(1), {}, {"init_from": INIT_SCRATCH})
    first, meta = load_member(path, CPU)
    assert isinstance(first, CompiledMember) and meta["sha256"][:24] in first.cache_dir.name
    save_model(path, _net(2), {}, {"init_from": INIT_SCRATCH})  # the same file name, other weights
    second, _ = load_member(path, CPU)
    assert second.cache_dir != first.cache_dir
    assert len(list(cache.iterdir())) == 3  # the built entry and one per checkpoint
    np.testing.assert_allclose(_head_outputs(second, images), _head_outputs(second.net, images), rtol=1e-4, atol=1e-5)
    assert not np.allclose(_head_outputs(second, images), _head_outputs(first, images), atol=1e-3)
    monkeypatch.setenv(RUNTIME_ENV, TORCH)
    assert isinstance(load_member(path, CPU)[0], BoneAgeNet)


@pytest.fixture(scope="module")
def served_pair(committed_artifacts):
    """The committed ensemble loaded twice: eager PyTorch float32, and OpenVINO (the default on the CPU)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(RUNTIME_ENV, TORCH)
        eager = Predictor.load(committed_artifacts)
        patch.setenv(RUNTIME_ENV, OPENVINO)
        compiled = Predictor.load(committed_artifacts)
    assert all(isinstance(m, BoneAgeNet) for m in eager.members.values())
    assert all(isinstance(m, CompiledMember) for m in compiled.members.values())
    return eager, compiled


@pytest.mark.slow
def test_served_ensemble_on_full_size_samples_matches_torch(served_pair, fullres_dir, sample_label):
    """Every full-size sample through the user's path (decode, gate, both views, calibration): same age, same stage."""
    eager, compiled = served_pair
    paths = sorted(fullres_dir.glob("*.png"))
    assert len(paths) == 24
    diffs = []
    for path in paths:
        _, male = sample_label(path.stem)
        a, b = eager.predict(path, male), compiled.predict(path, male)
        diffs.append(abs(a.bone_age_months - b.bone_age_months))
        assert a.stage == b.stage and a.stage_from_age == b.stage_from_age, path.name
        assert a.warnings == b.warnings, path.name
        assert a.gate.score == pytest.approx(b.gate.score, rel=1e-3, abs=1e-3), path.name
        np.testing.assert_allclose(list(b.stage_probabilities.values()), list(a.stage_probabilities.values()),
                                   atol=1e-3)
        assert (a.interval.low, a.interval.high) == pytest.approx((b.interval.low, b.interval.high), abs=MAX_AGE_DIFF)
    assert max(diffs) <= MAX_AGE_DIFF, max(diffs)


def test_grad_cam_stays_on_torch(served_pair, fullres_sample):
    eager, compiled = served_pair
    assert isinstance(compiled.member_for(AGE), BoneAgeNet)
    pred = compiled.predict(fullres_sample, male=False)
    np.testing.assert_allclose(compiled.explain(pred.original, male=False).heatmap,
                               eager.explain(pred.original, male=False).heatmap, atol=1e-5)


@pytest.mark.slow
def test_served_ensemble_on_299_px_images_in_batches_matches_torch(committed_artifacts, data_299, monkeypatch):
    """The evaluate / calibrate path (batches of 4, a partial last batch, the gate features of the same pass)."""
    split = pd.read_csv(committed_artifacts / "split.csv")
    test_ids = split.loc[split["split"] == "test", "id"].astype(str)
    labels = read_labels(data_299 / "boneage-training-dataset.csv")
    frame = attach_paths(labels[labels["id"].astype(str).isin(test_ids)].head(30).reset_index(drop=True),
                         data_299 / "boneage-training-dataset")
    columns = {}
    for name in (TORCH, OPENVINO):
        monkeypatch.setenv(RUNTIME_ENV, name)
        columns[name] = cnn_columns(Ensemble.load(committed_artifacts, CPU), frame, None)
    eager, compiled = columns[TORCH], columns[OPENVINO]
    age, stage = system_column(CNN, AGE), system_column(CNN, STAGE)
    assert eager.table[age].notna().sum() == len(frame) == 30
    assert (eager.table[age] - compiled.table[age]).abs().max() <= MAX_AGE_DIFF
    assert eager.table[stage].tolist() == compiled.table[stage].tolist()
    np.testing.assert_allclose(compiled.gate_features[1], eager.gate_features[1], rtol=1e-3, atol=1e-4)


def test_a_member_from_a_warm_cache_builds_its_pytorch_network_only_when_asked(tmp_path, monkeypatch, images):
    """Serving predictions reads the compiled model alone; Grad-CAM's network is built from the checkpoint on demand."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    path = tmp_path / "member.pt"
    save_model(path, _net(3), {}, {"init_from": INIT_SCRATCH})
    load_member(path, CPU)  # cold: converts (which needs the network) and fills the cache
    built = []
    monkeypatch.setattr(runtime, "net_from_payload",
                        lambda payload, device="cpu": built.append(1) or BoneAgeNet.__new__(BoneAgeNet))
    member, _ = load_member(path, CPU)  # warm: the network is not built
    outputs = _head_outputs(member, images)
    assert not member.has_net and not built and member.spec == _net(3).spec
    monkeypatch.undo()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    member, _ = load_member(path, CPU)
    assert not member.has_net
    np.testing.assert_allclose(_head_outputs(member.net, images), outputs, rtol=1e-4, atol=1e-5)
    assert member.has_net and member.net is member.net  # built once, then kept
