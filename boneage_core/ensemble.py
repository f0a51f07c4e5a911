"""The CNN ensemble of an artifacts folder (members, test-time views, calibration, input gate), loaded once, and its one
combine -> calibrate -> gate wiring that Predictor, evaluate and the calibrate stage all call."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .calibration import CALIBRATION_FILE, AgeCalibration, apply_calibration, load_calibration
from .checkpoint import read_hashed
from .errors import ArtifactError, MissingArtifactError
from .gate import GATE_FILE, GateDecision, InputGate, check_network, gate_member
from .heads import AGE
from .inference import ensemble_outputs, image_gate_features, member_features, member_outputs
from .manifest import UNVERSIONED, manifest_version, model_files, read_manifest, verify_models
from .preprocess import CropBox, PreprocessSpec, crop_box, is_grainy, prepare
from .runtime import Member, load_member, runtime_of
from .stages import StageScheme
from .views import NO_TTA, Views, as_views, describe_views

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class EnsembleOutputs:
    """What one pass of the ensemble over N images gives (arrays have N rows)."""

    combined: dict[str, np.ndarray]  # per head: every view of every member combined, the age calibrated when one applies
    raw: dict[str, np.ndarray]  # per head, before the calibration
    bounds: tuple[np.ndarray, np.ndarray] | None  # the age's prediction interval (None without a calibration)
    members: dict[str, dict[str, list[np.ndarray]]]  # per member: {head: [one array per view]}
    gate_features: np.ndarray | None  # the gate network's features of the unzoomed view (None without a gate)

    def age_spread(self) -> np.ndarray | None:
        """Per image, the largest minus the smallest member estimate of the age (months, uncalibrated, each member's
        views combined); None with fewer than two members with an age head."""
        ages = [ensemble_outputs([m])[AGE] for m in self.members.values() if AGE in m]
        return None if len(ages) < 2 else np.ptp(np.stack(ages), axis=0)


def _calibration(folder: Path, hashes: dict[str, str], views: Views, notes: list[str]) -> AgeCalibration | None:
    """The folder's calibration when it was fitted for exactly these member files and views; else None with a note."""
    try:
        calibration = load_calibration(folder)
        reason = (f"{folder} has no {CALIBRATION_FILE} (run `train.py --stages calibrate,evaluate`)" if calibration
                  is None else calibration.stale_reason(hashes, views))
    except ArtifactError as exc:
        calibration, reason = None, str(exc)
    if reason:
        notes.append(f"No prediction intervals and no bias correction: {reason}")
        logger.warning("%s", notes[-1])
        return None
    return calibration


def _gate(folder: Path, default: str, loaded: Mapping[str, Member], hashes: Mapping[str, str], dev: torch.device,
          notes: list[str]) -> tuple[InputGate | None, str, Member]:
    """(gate, name, network): the folder's input gate and the network it reads, a member or another model file of the
    folder (read and hashed here, checked against the hash the gate recorded). Without a usable gate: (None, `default`,
    that member), with a note (images are then scored unchecked)."""
    path = folder / GATE_FILE
    if not path.is_file():
        notes.append(f"No input gate in {folder}: images are scored without checking that they are hand radiographs "
                     "(run `train.py --stages gate`)")
        logger.warning("%s", notes[-1])
        return None, default, loaded[default]
    try:
        gate = InputGate.load(path)
        name = gate.member
        if name in loaded:
            check_network(gate, path, name, hashes[name])
            net = loaded[name]
        elif (folder / name).is_file():
            data, sha256 = read_hashed(folder / name)
            check_network(gate, path, name, sha256)
            net = load_member(folder / name, dev, data=data, sha256=sha256)[0]
        else:
            raise MissingArtifactError(f"{path} was fitted on {name}, which is not in {folder}")
    except ArtifactError as exc:
        notes.append(f"No input gate: {exc}")
        logger.warning("%s", notes[-1])
        return None, default, loaded[default]
    return gate, name, net


class Ensemble:
    """The members of an artifacts folder with their views, calibration and input gate."""

    def __init__(self, members: dict[str, Member], device: torch.device, calibration: AgeCalibration | None = None,
                 views: Views = NO_TTA, version: str = UNVERSIONED, notes: list[str] | None = None,
                 meta: dict[str, dict] | None = None, gate: InputGate | None = None, gate_name: str | None = None,
                 gate_net: Member | None = None):
        if not members:
            raise MissingArtifactError("an ensemble needs at least one model")
        self.members = members
        self.meta = meta or {}
        self.device = device
        self.calibration = calibration  # bias correction of the age and its prediction interval
        self.views = as_views(views)  # default test-time zoom factors: as the holdout metrics were computed
        self.version = version  # the manifest hash: the model version on every report
        self.notes = notes or []  # what the folder lacks (shown by front ends)
        self.gate = gate  # refuses non-radiographs, turns / mirrors images that need it
        self.gate_name = gate_name or gate_member({name: net.spec.heads for name, net in members.items()})
        # the network whose features the gate reads: a member, or a network of its own (not in the combined estimate)
        self.gate_net: Member = members[self.gate_name] if gate_net is None else gate_net
        self.scheme: StageScheme = next(iter(members.values())).spec.scheme
        if any(net.spec.scheme != self.scheme for net in members.values()):
            raise ArtifactError("the ensemble members use different stage schemes")

    @classmethod
    def load(cls, artifacts_dir: str | Path = "artifacts", device: str | torch.device = "cpu",
             members: Sequence[str] | None = None, views: Views | None = None, calibrated: bool = True,
             gated: bool = True):
        """The members named in manifest.json (hash-checked), its test-time views, calibration and input gate.

        Each member file is read and hashed once. `members` / `views` replace the manifest's (named members are not
        checked against it: a training run names the ones it just wrote); a calibration is applied only when it was
        fitted for exactly these files and views. A folder without a manifest and without named members loads every
        checkpoint in it, without TTA and without calibration. `calibrated=False` / `gated=False` load no calibration /
        gate (the calibrate stage fits one). On the CPU the members' network pass runs through OpenVINO
        (:func:`runtime.load_member`; BONEAGE_RUNTIME=torch for eager PyTorch).
        """
        folder = Path(artifacts_dir)
        dev = torch.device(device)
        manifest = read_manifest(folder)
        notes: list[str] = []
        if members is not None:
            names = list(members)
        elif manifest is not None:
            names = manifest.members
        else:
            names = model_files(folder)
            calibrated = False
            if names:
                notes.append(f"{folder} has no manifest.json: no test-time augmentation and no prediction intervals")
        views = as_views(views) if views is not None else (manifest.views if manifest is not None else NO_TTA)
        if not names:
            raise MissingArtifactError(f"no trained CNN in {folder}; run train.py first")
        read = {name: read_hashed(folder / name) for name in names if (folder / name).is_file()}
        if members is None and manifest is not None:
            verify_models(folder, manifest, {name: sha256 for name, (_, sha256) in read.items()})
        loaded, meta = {}, {}
        for name in names:
            if name not in read:
                raise MissingArtifactError(f"{folder / name}: model file not found")
            data, sha256 = read.pop(name)  # the bytes are let go once the member is built
            loaded[name], meta[name] = load_member(folder / name, dev, data=data, sha256=sha256)
        hashes = {name: meta[name]["sha256"] for name in names}
        heads = list(dict.fromkeys(h for net in loaded.values() for h in net.spec.heads))
        calibration = _calibration(folder, hashes, views, notes) if calibrated and AGE in heads else None
        gate_name = gate_member({name: net.spec.heads for name, net in loaded.items()})
        gate, gate_net = None, loaded[gate_name]
        if gated:
            gate, gate_name, gate_net = _gate(folder, gate_name, loaded, hashes, dev, notes)
        logger.info("Loaded %s from %s on %s through %s (%s)%s", ", ".join(names), folder, dev,
                    runtime_of(next(iter(loaded.values()))), describe_views(views),
                    "" if gate_name in loaded else f"; the input gate reads {gate_name}")
        return cls(loaded, dev, calibration, views, manifest_version(folder), notes, meta, gate, gate_name, gate_net)

    @property
    def heads(self) -> list[str]:
        """The heads the ensemble provides (age, stage), in member order."""
        return list(dict.fromkeys(h for net in self.members.values() for h in net.spec.heads))

    @property
    def gate_apart(self) -> bool:
        """Whether the gate reads a network of its own (one more pass, over the unzoomed view only)."""
        return self.gate is not None and self.gate_name not in self.members

    @property
    def specs(self) -> list[PreprocessSpec]:
        """The distinct preprocessings of the members, in member order (members of the same input share one), then the
        gate network's when it is not a member."""
        nets = [*self.members.values(), *([self.gate_net] if self.gate_apart else [])]
        return list(dict.fromkeys(net.spec.preprocess for net in nets))

    def member_hashes(self) -> dict[str, str]:
        """{model file: sha256} of the members, as read when they were loaded (what a calibration is tied to)."""
        return {name: self.meta[name]["sha256"] for name in self.members}

    def calibration_for(self, views: Views) -> AgeCalibration | None:
        """The calibration when it was fitted with these test-time views, else None."""
        if self.calibration is None or self.calibration.views_mismatch(views):
            return None
        return self.calibration

    def inputs(self, gray: np.ndarray, grainy: bool | None = None) -> dict[PreprocessSpec, np.ndarray]:
        """One float gray image's model inputs, (1, S, S) uint8 per distinct spec; the hand is found, and the grain
        measured (unless `grainy` says), once for every member."""
        boxes: dict[bool, CropBox] = {}  # by hand_crop
        grainy = is_grainy(gray) if grainy is None else grainy
        prepared: dict[PreprocessSpec, np.ndarray] = {}
        for spec in self.specs:
            if spec.hand_crop not in boxes:
                boxes[spec.hand_crop] = crop_box(gray, spec)
            prepared[spec] = prepare(gray, spec, boxes[spec.hand_crop], grainy)[None]
        return prepared

    def outputs(self, images: Mapping[PreprocessSpec, np.ndarray], male: Sequence[bool] | np.ndarray,
                views: Views | None = None, progress: bool = False) -> EnsembleOutputs:
        """Every member on its (N, S, S) uint8 inputs (``images[its spec]``) and `views` (default: the ensemble's),
        combined per head, calibrated, and the gate network's features (from the same backbone pass when it is a
        member)."""
        views = self.views if views is None else as_views(views)
        male_t = torch.as_tensor(np.asarray(male, dtype=np.int64))
        per_member: dict[str, dict[str, list[np.ndarray]]] = {}
        features: list[np.ndarray] = []
        for name, net in self.members.items():
            wanted = features if self.gate is not None and name == self.gate_name else None
            pixels = torch.from_numpy(np.ascontiguousarray(images[net.spec.preprocess]))
            per_member[name] = member_outputs(net, pixels, male_t, self.device, views, progress=progress,
                                              features=wanted)
        if self.gate_apart:
            pixels = torch.from_numpy(np.ascontiguousarray(images[self.gate_net.spec.preprocess]))
            features.append(member_features(self.gate_net, pixels, self.device))
        raw = ensemble_outputs(list(per_member.values()))
        combined, bounds = apply_calibration(raw, self.calibration_for(views))
        gate_features = None if self.gate is None else (np.concatenate(features) if features else np.zeros((0, 0)))
        return EnsembleOutputs(combined, raw, bounds, per_member, gate_features)

    def gate_features(self, gray: np.ndarray) -> np.ndarray:
        """The gate network's gate features of one gray image as given (one view, never smoothed; what the input gate
        reads)."""
        return image_gate_features(self.gate_net, gray, self.device)

    def decisions(self, features: np.ndarray, gray_of: Callable[[int], np.ndarray]) -> list[GateDecision]:
        """The input gate's decision per feature row (``InputGate.decide``): a correction (grey scale inverted back,
        turn, mirroring) is tried on the gate network alone, on ``gray_of(row)`` corrected. ``gray_of(row)`` is called
        at most once per row, when a first correction is tried (the laterality test reads every scored image's mirror
        image; a turn search tries three more)."""
        out = []
        for i in range(len(features)):
            read: list[np.ndarray] = []

            def corrected(c, i=i, read=read) -> np.ndarray:
                if not read:
                    read.append(gray_of(i))
                return self.gate_features(c.apply(read[0]))

            out.append(self.gate.decide(features[i:i + 1], corrected))
        return out

    def decide(self, gray: np.ndarray, features: np.ndarray | None = None) -> GateDecision:
        """The input gate's decision on one gray image as given, by the rule ``Predictor.predict`` applies.

        `features`: the gate features (1, F) of the members' pass over this image, reused when the members read it as
        the gate does; pass None for a grainy film (the members read it smoothed, the gate reads it as given), and
        they are computed from `gray`. Every correction the gate tries is made from `gray`."""
        return self.decisions(self.gate_features(gray) if features is None else features, lambda _: gray)[0]
