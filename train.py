"""Build an artifacts folder: split, HOG + XGBoost baseline, EfficientNet models, metrics, manifest (see boneage_core.train_cli)."""

from __future__ import annotations

import sys

from boneage_core.train_cli import main

if __name__ == "__main__":
    sys.exit(main())
