"""Shared fixtures: paths to ../shared (missing data is a failure, never a skip) and small synthetic images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import servers

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BONEAGE_SHARED", REPO.parent / "shared"))
DATA_299 = SHARED / "data" / "rsna-bone-age-299"
FULLRES = SHARED / "data" / "samples-fullres"
GP_TABLE = SHARED / "reference" / "greulich-pyle-brush-foundation.csv"
ARTIFACTS = REPO / "artifacts"


#: Fixtures that take minutes on the 2-core CPU machine: a test that uses one is marked slow (pytest.ini).
SLOW_FIXTURES = frozenset({"quick_run"})


def pytest_collection_modifyitems(items) -> None:
    """Mark every test that needs the training run (quick_run, minutes) slow; the slowest others carry the mark."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def require(path: Path) -> Path:
    """Return path, failing the test (in CI and locally alike) when shared data is missing."""
    assert path.exists(), f"required shared data missing: {path} (tests read ../shared at run time)"
    return path


@pytest.fixture(scope="session")
def data_299() -> Path:
    return require(DATA_299)


@pytest.fixture(scope="session")
def fullres_dir() -> Path:
    return require(FULLRES)


@pytest.fixture(scope="session")
def gp_table() -> Path:
    return require(GP_TABLE)


@pytest.fixture(scope="session")
def fullres_sample(fullres_dir: Path) -> Path:
    return require(fullres_dir / "1377.png")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a module: on the shared 2-core machine two contend and run ~10x slower."""
    threads, _ = torch.get_num_threads(), torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def hand_like() -> np.ndarray:
    """A synthetic 'radiograph': dark background, bright blob with bony stripes, float in [0, 1]."""
    rng = np.random.default_rng(0)
    h, w = 200, 150
    yy, xx = np.mgrid[0:h, 0:w]
    img = 0.05 + 0.02 * rng.random((h, w))
    hand = ((yy - 120) / 70.0) ** 2 + ((xx - 75) / 45.0) ** 2 < 1
    img[hand] += 0.4
    for x0 in (45, 65, 85, 105):
        img[(abs(xx - x0) < 4) & (yy > 30) & (yy < 150)] += 0.4
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory, data_299: Path) -> Path:
    """One real end-to-end `train.py --quick` run on a few hundred 299 px images (no pretrained weights)."""
    from boneage_core import train_cli as train

    out = tmp_path_factory.mktemp("quick") / "artifacts"
    cache = tmp_path_factory.mktemp("cache")
    code = train.main(["--data-dir", str(data_299), "--quick", "--no-pretrained", "--limit", "240",
                       "--out", str(out), "--cache-dir", str(cache), "--workers", "1"])
    assert code == 0, "train.py --quick failed"
    return out


@pytest.fixture(scope="session")
def committed_artifacts() -> Path:
    """The trained artifacts committed with the repo (the app runs on these)."""
    return require(ARTIFACTS / "manifest.json").parent


@pytest.fixture(scope="session")
def committed_predictor(committed_artifacts: Path):
    """The Predictor of the committed artifacts, loaded once per session (read-only use: never mutate it)."""
    from boneage_core.predictor import Predictor

    return Predictor.load(committed_artifacts)


@pytest.fixture(scope="session")
def format1_models(tmp_path_factory) -> Path:
    """A folder of format-1 checkpoints (regressor.pt + classifier.pt, laid out as the pair served until the 256 px
    ensemble replaced it; seeded random weights): the two-file layout and the upgrade of old checkpoints."""
    from format1 import write_format1_pair

    return write_format1_pair(tmp_path_factory.mktemp("format1"))


@pytest.fixture(scope="session")
def dicom_from():
    """Factory: DICOM bytes made from a PNG with given tags, as a scanner would send them."""
    import io

    from PIL import Image

    def _dicom_from(png: Path, **tags) -> bytes:
        """A 16-bit MONOCHROME2 DICOM of a PNG, with extra tags (PatientSex=..., dates)."""
        from pydicom.dataset import FileDataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

        pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint16) * 16
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("upload.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CR"
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.astype("<u2").tobytes()
        for key, value in tags.items():
            setattr(ds, key, value)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    return _dicom_from


@pytest.fixture(scope="session")
def open_page():
    """Factory: the app (streamlit_app.py) under AppTest, switched to app/pages/<name>.py, run once, no exception."""
    from streamlit.testing.v1 import AppTest

    def _open(name: str, timeout: float = 180):
        at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=timeout).run()
        at.switch_page(f"app/pages/{name}.py").run()
        assert not at.exception, (name, [e.value for e in at.exception])
        return at

    return _open


@pytest.fixture(scope="session")
def text_page_png() -> bytes:
    """A non-hand image: a screenshot-like page of black text on white (PNG bytes), drawn with PIL."""
    import io

    from PIL import Image, ImageDraw

    page = Image.new("L", (1200, 1600), 255)
    draw = ImageDraw.Draw(page)
    for row in range(40):
        draw.text((60, 40 + row * 38), f"Line {row}: the quick brown fox jumps over the lazy dog " * 2, fill=0)
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def sample_label(fullres_dir: Path):
    """Factory: the (true bone age in months, male) of a full-size sample id from boneage-samples.csv."""
    import pandas as pd

    from boneage_core.vocab import parse_sex

    labels = pd.read_csv(fullres_dir / "boneage-samples.csv", dtype={"id": str})

    def _label(sample_id: str) -> tuple[float, bool]:
        row = labels[labels["id"] == sample_id]
        assert len(row) == 1, f"{sample_id} not in boneage-samples.csv"
        return float(row.iloc[0]["boneage"]), parse_sex(row.iloc[0]["male"])

    return _label


SERVER_STARTUP_S = 90


@pytest.fixture
def free_port() -> int:
    """A TCP port free on the loopback address now."""
    return servers.free_port()


@pytest.fixture(scope="session")
def streamlit_server(tmp_path_factory):
    """`streamlit run streamlit_app.py` on a free localhost port, healthy; yields (base URL, log path)."""
    port = servers.free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    url = f"http://{servers.HOST}:{port}"
    command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
               "--server.port", str(port), "--server.address", servers.HOST, "--browser.gatherUsageStats", "false"]
    with servers.child_server(command, f"{url}/_stcore/health", log_path, SERVER_STARTUP_S, cwd=REPO):
        yield url, log_path
