"""The REST service: the same report as assess(), PDF, errors as JSON, limits, auth, privacy, a real uvicorn."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader

from boneage_core import serve
from boneage_core.assess import assess
from tests import servers

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
AGE = 150.0
SERVER_STARTUP_S = 120


@pytest.fixture(scope="module")
def image(fullres_sample) -> bytes:
    return fullres_sample.read_bytes()


@pytest.fixture(scope="module")
def client(committed_artifacts, committed_predictor):
    with TestClient(serve.create_app(committed_artifacts, predictor=committed_predictor, token="")) as test_client:
        yield test_client


def _post(client: TestClient, data: bytes, fields: dict, name: str = "hand.png", **kwargs) -> httpx.Response:
    return client.post("/v1/assess", files={"image": (name, data, "image/png")}, data=fields, **kwargs)


def test_json_is_the_report_of_assess(client, committed_predictor, image):
    response = _post(client, image, {"sex": "F", "chronological_age_months": str(AGE)})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = assess(committed_predictor, image, "F", chronological_age_months=AGE, name="hand.png").to_dict()
    assert body.pop("timestamp") and expected.pop("timestamp")
    assert body == json.loads(json.dumps(expected))
    assert body["clinical"]["z_score"] == pytest.approx(expected["clinical"]["z_score"])


def test_dates_and_the_cli_sex_vocabulary(client, image):
    response = _post(client, image, {"sex": "girl", "birth_date": "2012-03-01", "study_date": "2024-09-15"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sex"] == "F" and 150 < body["clinical"]["chronological_age_months"] < 151
    # DICOM's date form is read by the same parser as the CLI's (not as a Unix timestamp)
    dicom_form = _post(client, image, {"sex": "girl", "birth_date": "20120301", "study_date": "20240915"})
    assert dicom_form.status_code == 200, dicom_form.text
    assert dicom_form.json()["clinical"]["chronological_age_months"] == body["clinical"]["chronological_age_months"]


def test_pdf_report(client, image):
    response = _post(client, image, {"sex": "M", "chronological_age_months": str(AGE)}, params={"format": "pdf"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    text = PdfReader(io.BytesIO(response.content)).pages[0].extract_text()
    assert "Bone-age assessment report" in text and "Category:" in text


@pytest.mark.parametrize("fields, message", [
    ({}, "sex: Field required"),
    ({"sex": ""}, "sex: Field required"),
    ({"sex": "X"}, "sex not understood"),
    ({"sex": "F", "chronological_age_months": "-3"}, "chronological_age_months"),
    ({"sex": "F", "birth_date": "2012-03-01"}, "both the birth date and the study date"),
    ({"sex": "F", "birth_date": "03/01/2012", "study_date": "2024-09-15"}, "birth date '03/01/2012' is not a date"),
    ({"sex": "F", "chronological_age_months": "100", "birth_date": "2012-03-01", "study_date": "2024-09-15"},
     "not both"),
])
def test_bad_fields_are_422_with_a_message(client, image, fields, message):
    response = _post(client, image, fields)
    assert response.status_code == 422 and message in response.json()["detail"], response.text


def test_unreadable_and_non_hand_images_are_422_with_the_reason(client, text_page_png):
    broken = _post(client, b"\x89PNG\r\n\x1a\n truncated", {"sex": "F"})
    assert broken.status_code == 422 and isinstance(broken.json()["detail"], str)
    page = _post(client, text_page_png, {"sex": "F"})
    assert page.status_code == 422 and "does not look like a hand radiograph" in page.json()["detail"]
    no_image = client.post("/v1/assess", data={"sex": "F"}, files={"other": ("a.txt", b"x", "text/plain")})
    assert no_image.status_code == 422 and "no 'image' file" in no_image.json()["detail"]
    wrong_format = _post(client, b"x", {"sex": "F"}, params={"format": "xml"})
    assert wrong_format.status_code == 422 and "format" in wrong_format.json()["detail"]


def test_uploads_over_the_limit_are_413_by_header_and_while_streaming(committed_artifacts, committed_predictor, image):
    limit = len(image) // 2
    app = serve.create_app(committed_artifacts, predictor=committed_predictor, token="", max_upload_bytes=limit)
    with TestClient(app) as small:
        declared = _post(small, image, {"sex": "F"})
        assert declared.status_code == 413 and "larger than" in declared.json()["detail"]
        header_only = small.post("/v1/assess", content=b"--x--\r\n", headers={  # refused on the header alone
            "content-type": "multipart/form-data; boundary=x", "content-length": str(limit + 1)})
        assert header_only.status_code == 413
        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"sex\"\r\n\r\nF\r\n--{boundary}\r\n"
                f"Content-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()

        def chunks():  # no Content-Length: sent chunked, so only counting the stream can stop it
            for start in range(0, len(body), 65536):
                yield body[start:start + 65536]

        streamed = small.post("/v1/assess", content=chunks(),
                              headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert streamed.status_code == 413 and "larger than" in streamed.json()["detail"]


def test_saturated_service_answers_503_with_retry_after(committed_artifacts, committed_predictor, image):
    app = serve.create_app(committed_artifacts, predictor=committed_predictor, token="", max_pending=1)
    with TestClient(app) as busy:
        admission = app.state.service.admission
        assert admission.acquire(blocking=False)  # one assessment in progress
        try:
            response = _post(busy, image, {"sex": "F"})
        finally:
            admission.release()
        assert response.status_code == 503 and int(response.headers["retry-after"]) > 0
        assert "busy" in response.json()["detail"]
        assert _post(busy, image, {"sex": "F"}).status_code == 200  # the slot is free again after each request
        assert _post(busy, image, {"sex": "F"}).status_code == 200


def test_bearer_token_guards_every_route_but_health(committed_artifacts, committed_predictor, image, monkeypatch):
    monkeypatch.setenv(serve.TOKEN_ENV, "s3cret-token")
    with TestClient(serve.create_app(committed_artifacts, predictor=committed_predictor)) as guarded:
        assert guarded.get("/v1/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
            response = guarded.get("/v1/model", headers=headers)
            assert response.status_code == 401 and response.json()["detail"], headers
            assert _post(guarded, image, {"sex": "F"}, headers=headers).status_code == 401
        good = {"Authorization": "Bearer s3cret-token"}
        assert guarded.get("/v1/model", headers=good).status_code == 200
        assert _post(guarded, image, {"sex": "F"}, headers=good).status_code == 200


def test_health_and_model(client, committed_artifacts, committed_predictor):
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["model_version"] == committed_predictor.version
    model = client.get("/v1/model").json()
    manifest = json.loads((committed_artifacts / "manifest.json").read_text())
    metrics = json.loads((committed_artifacts / "metrics.json").read_text())
    assert model["members"] == manifest["members"] and model["views"] == manifest["views"]
    assert model["version"] == committed_predictor.version and model["metrics_note"] is None
    assert model["metrics"]["cnn_age"]["mae"] == metrics["cnn_age"]["mae"]
    assert model["metrics"]["cnn_stage"]["qwk"] == metrics["cnn_stage"]["qwk"]


def test_model_refuses_metrics_not_tied_to_the_models(committed_artifacts, committed_predictor, tmp_path):
    shutil.copy(committed_artifacts / "manifest.json", tmp_path)
    metrics = json.loads((committed_artifacts / "metrics.json").read_text())
    metrics["cnn_age"]["mae"] = 1.0
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    with TestClient(serve.create_app(tmp_path, predictor=committed_predictor, token="")) as other:
        model = other.get("/v1/model").json()
    assert model["metrics"] is None and "changed after the evaluation" in model["metrics_note"]


def test_openapi_documents_the_form_and_examples(client):
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/assess"]["post"]
    schema = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"image", "sex"} <= set(schema["required"]) and schema["properties"]["image"]["format"] == "binary"
    assert schema["properties"]["sex"]["examples"] == ["F"]
    assert post["responses"]["200"]["content"]["application/json"]["example"]["sex"] == "F"
    assert {"401", "413", "422", "503"} <= set(post["responses"])
    assert client.get("/docs").status_code == 200


def test_the_predictor_is_loaded_once_at_startup(committed_artifacts, committed_predictor, image, monkeypatch):
    loads = []
    monkeypatch.setattr(serve.Predictor, "load", lambda *args, **kwargs: loads.append(args) or committed_predictor)
    app = serve.create_app(committed_artifacts, token="")
    assert loads == []
    with TestClient(app) as started:
        assert len(loads) == 1
        for _ in range(2):
            assert _post(started, image, {"sex": "F"}).status_code == 200
    assert len(loads) == 1


def _listing(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*") if "__pycache__" not in p.parts}


def test_nothing_of_the_image_or_patient_is_logged_or_written(client, image, caplog, monkeypatch, tmp_path):
    name, birth, study = "Doe_Janette_PID778.png", "2012-03-01", "2024-09-15"
    created = []
    for factory in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        original = getattr(tempfile, factory)
        monkeypatch.setattr(tempfile, factory, lambda *a, _f=original, _n=factory, **k: created.append(_n) or _f(*a, **k))
    private_tmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    private_tmp.mkdir(), cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))  # where any temporary file would go now
    monkeypatch.chdir(cwd)
    folders = [private_tmp, cwd, REPO]
    before = [_listing(f) for f in folders]
    caplog.set_level(logging.DEBUG)
    for fmt in ("json", "pdf"):
        response = _post(client, image, {"sex": "F", "birth_date": birth, "study_date": study}, name=name,
                         params={"format": fmt})
        assert response.status_code == 200
    assert _post(client, b"not an image", {"sex": "F", "birth_date": birth, "study_date": study},
                 name=name).status_code == 422
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert caplog.records, "expected some log records (the check would be empty otherwise)"
    for secret in ("Doe_Janette", "PID778", birth, study, "20120301"):
        assert secret not in logged, secret
    assert created == [], f"uploads went through temporary files: {created}"
    assert [_listing(f) for f in folders] == before


def test_real_uvicorn_process_serves_an_image(committed_artifacts, image, tmp_path, free_port):
    url = f"http://{servers.HOST}:{free_port}"
    command = [sys.executable, "-m", "boneage_core.serve", "--artifacts", str(committed_artifacts),
               "--host", servers.HOST, "--port", str(free_port)]
    env = {**os.environ, serve.TOKEN_ENV: ""}
    with servers.child_server(command, f"{url}/v1/health", tmp_path / "serve.log", SERVER_STARTUP_S, REPO, env):
        response = httpx.post(f"{url}/v1/assess", files={"image": ("hand.png", image, "image/png")},
                              data={"sex": "F"}, timeout=60)
    assert response.status_code == 200, response.text
    assert 0 < response.json()["bone_age_months"] < 240
