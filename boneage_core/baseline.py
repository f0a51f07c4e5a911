"""HOG + XGBoost baseline for bone age (regression) and developmental stage (classification)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from skimage.feature import hog
from tqdm.auto import tqdm

from .preprocess import PreprocessSpec
from .stages import DEFAULT_SCHEME, StageScheme

logger = logging.getLogger(__name__)

META_FILE = "baseline.json"
REGRESSOR_FILE = "baseline_regressor.ubj"
CLASSIFIER_FILE = "baseline_classifier.ubj"


@dataclass(frozen=True)
class HogParams:
    """HOG descriptor settings."""

    pixels_per_cell: int = 16
    cells_per_block: int = 2
    orientations: int = 9


def hog_features(images: np.ndarray, male, params: HogParams) -> np.ndarray:
    """HOG of each preprocessed image (N, S, S) in [0, 1] or uint8, plus a sex column."""
    imgs = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
    rows = [
        hog(
            img,
            orientations=params.orientations,
            pixels_per_cell=(params.pixels_per_cell,) * 2,
            cells_per_block=(params.cells_per_block,) * 2,
            block_norm="L2-Hys",
            feature_vector=True,
        )
        for img in tqdm(imgs, desc="HOG", disable=len(imgs) < 500)
    ]
    sex = np.asarray(male, dtype=np.float32).reshape(-1, 1)
    return np.hstack([np.asarray(rows, dtype=np.float32).reshape(len(imgs), -1), sex])


@dataclass
class HogXGBoost:
    """The fitted baseline: both XGBoost models plus what is needed to rebuild their input."""

    spec: PreprocessSpec
    hog_params: HogParams
    scheme: StageScheme
    regressor: object | None = None
    classifier: object | None = None
    classes: tuple[int, ...] = ()  # stage indices the classifier's outputs stand for

    def features(self, images: np.ndarray, male) -> np.ndarray:
        return hog_features(images, male, self.hog_params)

    def predict_age(self, features: np.ndarray) -> np.ndarray:
        if self.regressor is None:
            raise RuntimeError("baseline regressor is not trained")
        return np.clip(self.regressor.predict(features), 0.0, 240.0)

    def predict_stage_proba(self, features: np.ndarray) -> np.ndarray:
        if self.classifier is None:
            raise RuntimeError("baseline classifier is not trained")
        proba = self.classifier.predict_proba(features)
        full = np.zeros((len(features), self.scheme.n_classes), dtype=np.float64)
        full[:, self._class_index()] = proba
        return full

    def _class_index(self) -> np.ndarray:
        return np.asarray(self.classes or range(self.scheme.n_classes), dtype=np.int64)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "kind": "hog_xgboost",
            "preprocess": self.spec.to_dict(),
            "hog": asdict(self.hog_params),
            "stage_scheme": self.scheme.to_dict(),
            "classes": self._class_index().tolist(),
        }
        if self.regressor is not None:
            self.regressor.save_model(folder / REGRESSOR_FILE)
        if self.classifier is not None:
            self.classifier.save_model(folder / CLASSIFIER_FILE)
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> "HogXGBoost":
        import xgboost as xgb

        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        model = cls(PreprocessSpec.from_dict(meta["preprocess"]), HogParams(**meta["hog"]),
                    StageScheme.from_dict(meta["stage_scheme"]))
        if (folder / REGRESSOR_FILE).is_file():
            model.regressor = xgb.XGBRegressor()
            model.regressor.load_model(folder / REGRESSOR_FILE)
        if (folder / CLASSIFIER_FILE).is_file():
            model.classifier = xgb.XGBClassifier()
            model.classifier.load_model(folder / CLASSIFIER_FILE)
        model.classes = tuple(int(c) for c in meta.get("classes", ()))
        return model


def fit_baseline(
    train_x: np.ndarray,
    train_age: np.ndarray,
    train_stage: np.ndarray,
    val_x: np.ndarray,
    val_age: np.ndarray,
    val_stage: np.ndarray,
    spec: PreprocessSpec,
    hog_params: HogParams,
    n_estimators: int = 600,
    max_depth: int = 5,
    learning_rate: float = 0.05,
    seed: int = 42,
    scheme: StageScheme = DEFAULT_SCHEME,
) -> HogXGBoost:
    """Fit both XGBoost models on HOG features, early-stopping on the validation split."""
    import xgboost as xgb

    common = dict(n_estimators=n_estimators, max_depth=max_depth, learning_rate=learning_rate, subsample=0.8,
                  colsample_bytree=0.5, tree_method="hist", random_state=seed, n_jobs=0,
                  early_stopping_rounds=max(10, n_estimators // 10))
    logger.info("Fitting XGBoost regressor on %s features", train_x.shape)
    reg = xgb.XGBRegressor(objective="reg:absoluteerror", **common)
    reg.fit(train_x, train_age, eval_set=[(val_x, val_age)], verbose=False)
    # XGBoost wants labels 0..k-1 with every class present; map the stages that occur.
    classes = np.unique(train_stage)
    remap = {c: i for i, c in enumerate(classes)}
    logger.info("Fitting XGBoost classifier (%d classes)", len(classes))
    clf = xgb.XGBClassifier(objective="multi:softprob", **common)
    val_known = np.isin(val_stage, classes)
    clf.fit(train_x, np.vectorize(remap.get)(train_stage),
            eval_set=[(val_x[val_known], np.vectorize(remap.get)(val_stage[val_known]))], verbose=False)
    return HogXGBoost(spec, hog_params, scheme, reg, clf, tuple(int(c) for c in classes))
