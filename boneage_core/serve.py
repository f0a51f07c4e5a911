"""REST service on assess.assess (FastAPI + uvicorn): POST /v1/assess, GET /v1/health, GET /v1/model.

python -m boneage_core.serve [--artifacts artifacts] [--host 127.0.0.1] [--port 8000]   (or `boneage-serve`)

The Predictor is loaded once at startup. Uploads are read into memory (never spooled to disk) and refused over
MAX_UPLOAD_BYTES; at most `max_pending` assessments are admitted at once (more get 503 with Retry-After), and they
run one at a time on the shared model, in a worker thread. Nothing of an image or a patient is logged or written.
With $BONEAGE_API_TOKEN set, every route but /v1/health needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hmac
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus  # its names exist in every Python >= 3.10 (starlette's newer 413/422 names do not)
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

import anyio
import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from . import __version__
from .artifacts import METRICS_FILE, read_json
from .assess import Assessment, run_assessment
from .clinical import DATE_HELP, ClinicalReadout, ReferenceError, load_reference
from .errors import ArtifactError, InputError
from .manifest import evaluated_path, read_manifest
from .predictor import Predictor
from .report import DISCLAIMER
from .vocab import SEX_HELP, parse_sex, sex_code

logger = logging.getLogger(__name__)

#: Environment variable holding the bearer token; unset or empty = no authentication.
TOKEN_ENV = "BONEAGE_API_TOKEN"
#: Largest upload accepted (the whole multipart body), checked on Content-Length and counted while it streams.
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
#: Assessments admitted at once (one runs on the model, the others wait for it); more are answered 503.
MAX_PENDING = 4
#: Seconds a client is asked to wait after a 503.
RETRY_AFTER_S = 2
#: The name the library sees for every upload: the client's file name never reaches a log message.
UPLOAD_NAME = "upload"
#: The headline figures of metrics.json shown by GET /v1/model: prediction column -> its keys.
HEADLINE_METRICS = {"cnn_age": ("n", "mae", "rmse", "r2", "within_12m"), "cnn_stage": ("n", "accuracy", "f1_macro", "qwk")}


class UploadTooLarge(InputError):
    """The request body is over the upload limit."""


# --- typed models ---------------------------------------------------------------------------------------------


class AssessFields(BaseModel):
    """The form fields of POST /v1/assess beside the image file."""

    sex: str = Field(description=f"Required, never guessed: {SEX_HELP}.", examples=["F"])
    chronological_age_months: float | None = Field(
        None, ge=0, description="Age at the study in months, for the Greulich-Pyle z-score.", examples=[150.0])
    # dates stay text here: assess() reads them with clinical.parse_date, the one date parser (pydantic's own would
    # read "20120301" as a Unix timestamp)
    birth_date: str | None = Field(None, description=f"Instead of the age: date of birth ({DATE_HELP}), with "
                                   "study_date.", examples=["2012-03-01"])
    study_date: str | None = Field(None, description=f"Date of the radiograph ({DATE_HELP}), with birth_date.",
                                   examples=["2024-09-15"])

    @field_validator("sex")
    @classmethod
    def _known_sex(cls, value: str) -> str:
        return sex_code(parse_sex(value))  # SexError is a ValueError: pydantic reports it as a 422


class Interval(BaseModel):
    low: float
    high: float
    level: float


class AssessmentOut(BaseModel):
    """The report as `boneage-predict --json` prints it (AssessmentReport.to_dict)."""

    model_config = ConfigDict(extra="allow")  # fields a newer report carries pass through

    name: str
    sex: Literal["M", "F"]
    bone_age_months: float | None
    bone_age_whole_months: int | None
    bone_age_years_months: str | None
    interval: Interval | None
    stage_name: str
    stage_source: str
    stage_probabilities: dict[str, float] | None
    clinical: ClinicalReadout | None
    clinical_note: str | None = Field(description="Why there is no clinical read-out, when an age was given.")
    reference: str
    model_version: str
    timestamp: str
    study: dict[str, str]
    warnings: list[str]
    disclaimer: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model_version: str
    service_version: str = __version__


class ModelInfo(BaseModel):
    version: str = Field(description="The manifest's hash: the model version on every report.")
    members: list[str]
    views: list[float] = Field(description="Test-time zoom factors served.")
    heads: list[str]
    notes: list[str] = Field(description="What the artifacts folder lacks (no calibration, no input gate, ...).")
    metrics: dict[str, dict[str, Any]] | None = Field(
        description=f"Headline holdout figures of {METRICS_FILE}, when the manifest ties it to these models.")
    metrics_note: str | None = Field(description="Why there are no metrics.")


class Problem(BaseModel):
    detail: str


EXAMPLE_REPORT = {
    "name": "hand.png", "sex": "F", "bone_age_months": 141.3, "bone_age_whole_months": 141,
    "bone_age_years_months": "11 y 9 m", "interval": {"low": 127.0, "high": 156.2, "level": 0.9},
    "stage_name": "early/mid puberty", "stage_source": "stage head",
    "stage_probabilities": {"infancy/toddler": 0.0, "pre-puberty": 0.07, "early/mid puberty": 0.91,
                            "late puberty": 0.02, "post-puberty": 0.0},
    "clinical": {"bone_age_months": 141.3, "interval_low_months": 127.0, "interval_high_months": 156.2,
                 "chronological_age_months": 150.0, "expected_bone_age_months": 148.6, "sd_months": 12.1,
                 "difference_months": -8.7, "z_score": -0.6, "z_low": -1.79, "z_high": 0.63,
                 "category": "within normal limits"},
    "clinical_note": None, "reference": "Greulich & Pyle (Brush Foundation)", "model_version": "3f9a1c2b7d40",
    "timestamp": "2026-12-05T02:00:00+00:00", "study": {}, "warnings": [], "disclaimer": DISCLAIMER,
}
ERRORS = {
    401: {"model": Problem, "description": "Missing or wrong bearer token (when BONEAGE_API_TOKEN is set)."},
    413: {"model": Problem, "description": f"Upload over {MAX_UPLOAD_BYTES // 2**20} MB."},
    422: {"model": Problem, "description": "Missing or unknown sex, bad dates, an unreadable image or one the "
          "input gate refuses as not a hand radiograph (the message says why)."},
    503: {"model": Problem, "description": "Too many assessments at once; retry after the Retry-After seconds."},
}


def _request_body() -> dict:
    """The multipart schema of POST /v1/assess for OpenAPI (the body is parsed by read_upload, not by FastAPI)."""
    schema = AssessFields.model_json_schema()
    schema["properties"] = {"image": {"type": "string", "format": "binary", "description":
                                      "The radiograph: PNG, JPEG, WebP, TIFF or DICOM."}, **schema["properties"]}
    schema["required"] = ["image", *schema.get("required", [])]
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


# --- the service's state and its dependencies -----------------------------------------------------------------


@dataclass
class Service:
    """What the app holds between requests: the model, the reference table and the limits."""

    predictor: Predictor
    artifacts: Path
    reference: pd.DataFrame | None
    token: str | None
    max_upload_bytes: int
    admission: threading.BoundedSemaphore
    model_limiter: anyio.CapacityLimiter  # one assessment on the shared model at a time


def _service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(_service)]
_bearer = HTTPBearer(auto_error=False, description=f"Needed on every route but /v1/health when {TOKEN_ENV} is set.")


async def require_token(service: ServiceDep,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401 unless no token is configured or the bearer token matches it (constant-time comparison)."""
    if not service.token:
        return
    given = credentials.credentials if credentials is not None and credentials.scheme.lower() == "bearer" else ""
    if not hmac.compare_digest(given.encode(), service.token.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


async def check_length(request: Request, service: ServiceDep) -> None:
    """413 before anything is read when the declared body is over the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > service.max_upload_bytes:
        raise HTTPException(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _too_large(service.max_upload_bytes))


async def admit(service: ServiceDep) -> AsyncIterator[None]:
    """One of the bounded assessment slots, or 503 with Retry-After at once (never waits)."""
    if not service.admission.acquire(blocking=False):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "busy: too many assessments at once",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    try:
        yield
    finally:
        service.admission.release()


def _too_large(limit: int) -> str:
    return f"upload larger than {limit / 2**20:g} MB"


async def _counted(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it streams in, refused (UploadTooLarge) as soon as it passes `limit` bytes."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise UploadTooLarge(_too_large(limit))
        yield chunk


@dataclass(frozen=True)
class Upload:
    """A parsed POST /v1/assess: the image bytes, the client's file name and the validated fields."""

    data: bytes
    filename: str
    fields: AssessFields


def _fields(form) -> AssessFields:
    """The validated fields; 422 with pydantic's message on a missing or unknown sex or a bad age or date."""
    values = {key: value for key, value in form.items() if key in AssessFields.model_fields and value != ""}
    try:
        return AssessFields(**values)
    except ValidationError as exc:
        raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, _messages(exc.errors())) from None


async def read_upload(request: Request, service: ServiceDep) -> Upload:
    """The multipart body read into memory (its file part never spooled to disk), within the upload limit."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, "send multipart/form-data with an 'image' file "
                            "and a 'sex' field")
    parser = MultiPartParser(request.headers, _counted(request, service.max_upload_bytes), max_files=1, max_fields=8)
    parser.spool_max_size = service.max_upload_bytes + 1  # file parts stay in memory (starlette's default: 1 MB)
    try:
        form = await parser.parse()
    except UploadTooLarge as exc:
        raise HTTPException(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc)) from None
    except MultiPartException as exc:
        raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, f"malformed multipart body: {exc.message}") from None
    image = form.get("image")
    fields = _fields(form)
    if not isinstance(image, UploadFile):
        raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, "no 'image' file in the form")
    data = await image.read()
    await form.close()
    return Upload(data, PurePath(image.filename or UPLOAD_NAME).name, fields)


def _messages(errors: list[dict]) -> str:
    """Pydantic / FastAPI validation errors as one line: 'sex: Value error, sex missing: ...; ...'."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts)


# --- the routes -----------------------------------------------------------------------------------------------


def _assess(service: Service, upload: Upload, explain: bool) -> Assessment:
    """run_assessment on the upload under a neutral name (so no client file name reaches a log), renamed after."""
    f = upload.fields
    result = run_assessment(service.predictor, upload.data, f.sex, chronological_age_months=f.chronological_age_months,
                            birth_date=f.birth_date, study_date=f.study_date, reference=service.reference,
                            name=UPLOAD_NAME, explain=explain)
    return dataclasses.replace(result, report=dataclasses.replace(result.report, name=upload.filename))


def _metrics(service: Service) -> tuple[dict | None, str | None]:
    """The headline figures when the manifest ties metrics.json to the served models, else (None, why)."""
    try:
        path = evaluated_path(service.artifacts, read_manifest(service.artifacts), METRICS_FILE)
        metrics = read_json(path, "metrics") or {}
    except ArtifactError as exc:
        return None, str(exc)
    return {column: {key: metrics[column][key] for key in keys if key in metrics[column]}
            for column, keys in HEADLINE_METRICS.items() if column in metrics}, None


def _routes(app: FastAPI) -> None:
    @app.get("/v1/health", response_model=Health, tags=["service"], summary="Liveness: the model is loaded")
    def health(service: ServiceDep) -> Health:
        return Health(model_version=service.predictor.version)

    @app.get("/v1/model", response_model=ModelInfo, tags=["service"], responses={401: ERRORS[401]},
             dependencies=[Depends(require_token)], summary="The served ensemble and its holdout figures")
    def model(service: ServiceDep) -> ModelInfo:
        predictor = service.predictor
        metrics, note = _metrics(service)
        return ModelInfo(version=predictor.version, members=list(predictor.members), views=list(predictor.views),
                         heads=predictor.heads, notes=list(predictor.notes), metrics=metrics, metrics_note=note)

    @app.post("/v1/assess", response_model=AssessmentOut, tags=["assessment"],
              summary="Assess one hand radiograph: bone age, stage and the Greulich-Pyle read-out",
              dependencies=[Depends(require_token), Depends(check_length), Depends(admit)],
              openapi_extra={"requestBody": _request_body()},
              responses={200: {"content": {"application/json": {"example": EXAMPLE_REPORT},
                                           "application/pdf": {"schema": {"type": "string", "format": "binary"}}},
                               "description": "The report (JSON, as `boneage-predict --json`), or the one-page "
                                              "PDF report with ?format=pdf."}, **ERRORS})
    async def assess_route(service: ServiceDep, upload: Annotated[Upload, Depends(read_upload)],
                           format: Annotated[Literal["json", "pdf"], Query(description="json or pdf")] = "json"):
        pdf = format == "pdf"
        result = await anyio.to_thread.run_sync(_assess, service, upload, pdf, limiter=service.model_limiter)
        if pdf:
            content = await anyio.to_thread.run_sync(result.pdf)
            return Response(content, media_type="application/pdf",
                            headers={"Content-Disposition": 'inline; filename="boneage-report.pdf"'})
        return result.report.to_dict()


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, HTTPStatus.UNPROCESSABLE_ENTITY)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _messages(exc.errors())}, HTTPStatus.UNPROCESSABLE_ENTITY)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # starlette re-raises it after this answer, so the server logs the traceback; the library saw only UPLOAD_NAME
        return JSONResponse({"detail": "internal error"}, status.HTTP_500_INTERNAL_SERVER_ERROR)


def _reference() -> pd.DataFrame | None:
    """The Greulich-Pyle table, read once; None (each report then says why) when it is missing or unreadable."""
    try:
        return load_reference()
    except ReferenceError as exc:
        logger.warning("no clinical read-out: %s", exc)
        return None


def create_app(artifacts: str | os.PathLike = "artifacts", *, token: str | None = None,
               max_pending: int = MAX_PENDING, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               predictor: Predictor | None = None) -> FastAPI:
    """The FastAPI app; the Predictor of `artifacts` is loaded once at startup (or `predictor` is used as given).

    token=None reads $BONEAGE_API_TOKEN (unset or empty: no authentication).
    """
    token = os.environ.get(TOKEN_ENV) if token is None else token

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = predictor if predictor is not None else Predictor.load(artifacts)
        for note in loaded.notes:
            logger.warning("%s", note)
        app.state.service = Service(loaded, Path(artifacts), _reference(), token or None, max_upload_bytes,
                                    threading.BoundedSemaphore(max_pending), anyio.CapacityLimiter(1))
        logger.info("serving model version %s (%d member(s))", loaded.version, len(loaded.members))
        yield

    app = FastAPI(title="Bone age", version=__version__, lifespan=lifespan,
                  description=f"Bone-age assessment of a left-hand radiograph (Greulich & Pyle style). {DISCLAIMER}")
    _routes(app)
    _handlers(app)
    return app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boneage-serve", description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts", help="artifacts folder (its manifest names the models)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted (the models load at startup; uvicorn exits with 3 when they cannot)."""
    import uvicorn

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(args.artifacts), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
