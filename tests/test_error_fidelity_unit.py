"""Error fidelity (issue 18, item 7), without a Triton: what each backend failure becomes for a client,
what the log keeps, the schedule check before the loop, `dgate serve`'s address, the OpenAPI answers."""

from __future__ import annotations

import importlib
import logging
import sys
import types
from pathlib import Path
from typing import Any

import grpc
import pytest
from diffusers import DiffusionPipeline, PNDMScheduler
from tritonclient.grpc._utils import get_error_grpc
from tritonclient.utils import InferenceServerException

from dgate.cli import build_parser, frontend_overrides
from dgate.core.errors import InvalidRequestError, RequestCancelled, is_cancellation, marked, unmarked
from dgate.core.families import spec_from_pipeline
from dgate.core.params import DenoiseParams
from dgate.core.schedulers import SchedulerFactory, check_schedule
from dgate.frontend.engine.errors import (
    EngineError,
    ModelNotFound,
    ServiceUnavailable,
)
from dgate.frontend.engine.errors import (
    RequestCancelled as EngineCancelled,
)
from dgate.frontend.engine.triton import triton_request_id
from dgate.frontend.engine.triton_errors import failure_message, map_triton_error
from dgate.frontend.errors import from_exception
from dgate.frontend.request_id import REQUEST_ID
from dgate.frontend.settings import FrontendSettings

STEPS_MESSAGE = "the pndm scheduler cannot run 3 inference step(s): choose more steps or another scheduler"


def triton_error(message: str, status: str | None = None) -> InferenceServerException:
    return InferenceServerException(message, status=status)


def rpc_error(code: grpc.StatusCode, details: str) -> InferenceServerException:
    """What tritonclient's aio client raises for a failed unary call: its own conversion of the RpcError."""
    return get_error_grpc(grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details))


# --- a client's mistake keeps its param --------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        # unary gRPC: Triton's status and its ensemble prefix
        rpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"in ensemble 'tiny-sd', invalid request (param "
                                                    f"num_inference_steps): {STEPS_MESSAGE}"),
        # the gRPC stream: a message only, no status
        triton_error(f"[request id: abc:image-1] in ensemble 'tiny-sd', invalid request (param num_inference_steps): "
                     f"{STEPS_MESSAGE}"),
    ],
    ids=["unary", "stream"],
)
def test_a_marked_invalid_arg_keeps_its_param_over_unary_and_stream(exc: InferenceServerException) -> None:
    mapped = map_triton_error(exc, "tiny-sd", "abc:image-1")
    assert isinstance(mapped, InvalidRequestError)
    assert (mapped.param, mapped.message) == ("num_inference_steps", STEPS_MESSAGE)
    answer = from_exception(mapped)
    assert (answer.status, answer.param, answer.code) == (400, "num_inference_steps", "invalid_value")


def test_tritons_own_invalid_arg_names_the_input_as_the_param() -> None:
    exc = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "[request id: r1] in ensemble 'tiny-sd', unexpected shape "
                    "for input 'guidance_scale' for model 'tiny-sd'. Expected [1], got [2]")
    mapped = map_triton_error(exc, "tiny-sd", "r1")
    assert isinstance(mapped, InvalidRequestError)
    assert mapped.param == "guidance_scale"
    assert mapped.message.startswith("unexpected shape for input 'guidance_scale'")


def test_marked_round_trip() -> None:
    error = unmarked("x " + marked(InvalidRequestError("a (b): c", "lora")))
    assert error is not None and (error.param, error.message) == ("lora", "a (b): c")


# --- a cancellation is a cancellation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [rpc_error(grpc.StatusCode.CANCELLED, "request cancelled"),
     triton_error("in ensemble 'tiny-sd', request cancelled")],  # the stream: the mark only
    ids=["unary", "stream"],
)
def test_a_cancelled_request_is_reported_as_cancelled(exc: InferenceServerException) -> None:
    mapped = map_triton_error(exc, "tiny-sd", "r2")
    assert isinstance(mapped, EngineCancelled)
    answer = from_exception(mapped, retry_after_s=7)
    assert (answer.status, answer.code, answer.headers) == (503, "request_cancelled", {"Retry-After": "7"})
    assert "r2" in answer.message


def test_request_cancelled_carries_the_mark() -> None:
    assert is_cancellation(str(RequestCancelled()))
    assert is_cancellation(str(RequestCancelled("deadline")))
    from dgate.core.denoise import DenoiseCancelled

    assert issubclass(DenoiseCancelled, RequestCancelled)


# --- backend text is sanitised; the log keeps it under the request id --------------------------------------

ORT_FAILURE = ("in ensemble 'tiny-sd', tiny-sd_denoiser: tiny-sd_unet: [ONNXRuntimeError] : 2 : INVALID_ARGUMENT : "
               "Got invalid dimensions for input: sample for the following indices index: 2 Got: 9 Expected: 8 "
               "(/opt/build/model_repository/tiny-sd_unet/1/model.onnx); Traceback (most recent call last): ...; "
               "operands could not be broadcast together with shapes (2,) (8,)")


@pytest.mark.parametrize("status", ["StatusCode.INTERNAL", "StatusCode.UNKNOWN", None])
def test_a_backend_failure_reaches_the_client_without_its_text(status: str | None,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="dgate.frontend.engine.triton_errors"):
        mapped = map_triton_error(triton_error(ORT_FAILURE, status), "tiny-sd", "req-42:image-1")
    assert type(mapped) is EngineError
    assert mapped.message == failure_message("tiny-sd", "req-42:image-1")
    for leak in ("/opt/", "model.onnx", "Traceback", "broadcast", "ONNXRuntimeError", "shapes"):
        assert leak not in mapped.message
    answer = from_exception(mapped)
    assert (answer.status, answer.code, answer.type) == (500, "engine_error", "server_error")
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == "req-42:image-1"]
    assert logged and "model.onnx" in logged[0].getMessage() and "broadcast" in logged[0].getMessage()


def test_the_frontend_logs_its_500s(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="dgate.frontend.errors"):
        assert from_exception(EngineError("the pipeline returned 2 images"), request_id="rid-7").status == 500
    assert [getattr(r, "request_id", None) for r in caplog.records] == ["rid-7"]


def test_the_request_id_travels_to_triton() -> None:
    token = REQUEST_ID.set("client-id-1")
    try:
        first, second = triton_request_id("image"), triton_request_id("image")
    finally:
        REQUEST_ID.reset(token)
    assert first.startswith("client-id-1:image-") and second.startswith("client-id-1:image-")
    assert first != second  # the cancellation board needs each Triton request's own id
    assert triton_request_id("video").startswith("video-")  # no HTTP request (a video worker)


# --- not loaded vs unknown ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message"),
    [("StatusCode.INTERNAL", "in ensemble 'tiny-sd', tiny-sd_denoiser: tiny-sd_unet: Request for unknown model: "
                             "'tiny-sd_unet' is not found"),
     ("StatusCode.NOT_FOUND", "in ensemble 'tiny-sd', Request for unknown model: 'tiny-sd_tokenize' is not found"),
     (None, "tiny-sd_unet: Failed for execute the inference request. Model 'tiny-sd_unet' is not ready.")],
)
def test_a_component_that_is_not_loaded_is_a_503(status: str | None, message: str) -> None:
    mapped = map_triton_error(triton_error(message, status), "tiny-sd", "r3")
    assert type(mapped) is ServiceUnavailable
    assert from_exception(mapped).status == 503


def test_an_unknown_pipeline_is_still_a_404() -> None:
    mapped = map_triton_error(rpc_error(grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'nope' is not found"),
                              "nope")
    assert isinstance(mapped, ModelNotFound)
    assert from_exception(mapped).status == 404


# --- the Python models: every error response is logged with its request id --------------------------------


class _TritonError:
    INTERNAL, INVALID_ARG, CANCELLED = "INTERNAL", "INVALID_ARG", "CANCELLED"

    def __init__(self, message: str, code: str) -> None:
        self.message, self.code = message, code


class _Logger:
    lines: list[tuple[str, str]] = []

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.lines.append(("info", message))

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls.lines.append(("warn", message))

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.lines.append(("error", message))


class _Request:
    def request_id(self) -> str:
        return "client-9:image-ab"


@pytest.fixture
def triton_io(monkeypatch: pytest.MonkeyPatch) -> Any:
    """dgate.model_repository.triton_io over a stand-in for the stub's triton_python_backend_utils."""
    fake = types.ModuleType("triton_python_backend_utils")
    fake.TritonError = _TritonError  # type: ignore[attr-defined]
    fake.Logger = _Logger  # type: ignore[attr-defined]
    fake.InferenceResponse = lambda output_tensors, error=None: error  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    monkeypatch.delitem(sys.modules, "dgate.model_repository.triton_io", raising=False)
    _Logger.lines = []
    module = importlib.import_module("dgate.model_repository.triton_io")
    yield module
    sys.modules.pop("dgate.model_repository.triton_io", None)


def test_error_responses_are_coded_and_logged_with_the_request_id(triton_io: Any) -> None:
    invalid = triton_io.error_response(InvalidRequestError("bad steps", "num_inference_steps"), _Request(), "m")
    assert (invalid.code, unmarked(invalid.message).param) == ("INVALID_ARG", "num_inference_steps")
    cancelled = triton_io.error_response(RequestCancelled(), _Request(), "m")
    assert cancelled.code == "CANCELLED" and is_cancellation(cancelled.message)
    try:
        raise RuntimeError("tiny-sd_unet: /opt/x/model.onnx exploded")
    except RuntimeError as error:
        failed = triton_io.error_response(error, _Request(), "tiny-sd_denoiser")
    assert failed.code == "INTERNAL"
    levels = [level for level, _ in _Logger.lines]
    assert levels == ["info", "info", "error"]
    assert all("client-9:image-ab" in line for _, line in _Logger.lines)
    assert "Traceback" in _Logger.lines[2][1] and "model.onnx exploded" in _Logger.lines[2][1]


# --- a schedule diffusers rejects is a 400 before the loop -------------------------------------------------


def test_the_scheduler_factory_check_names_the_steps() -> None:
    factory = SchedulerFactory(dict(PNDMScheduler().config))
    with pytest.raises(InvalidRequestError) as caught:
        factory.check("pndm", 3, lambda scheduler: scheduler.set_timesteps(3))
    assert (caught.value.param, caught.value.message) == ("num_inference_steps", STEPS_MESSAGE)
    factory.check("pndm", 4, lambda scheduler: scheduler.set_timesteps(4))


def _params(**overrides: Any) -> DenoiseParams:
    values = {"negative_prompt": "", "num_images": 1, "num_inference_steps": 3,
              "guidance_scale": 4.0, "seed": 1, "height": 32, "width": 32, "scheduler": "pndm",
              "max_sequence_length": 0, "true_cfg_scale": 1.0} | overrides
    return DenoiseParams(**values)


def test_check_schedule_refuses_what_diffusers_would(tiny_models: dict[str, Path]) -> None:
    pipe = DiffusionPipeline.from_pretrained(str(tiny_models["tiny-sd"]))
    spec = spec_from_pipeline(pipe, "tiny-sd")
    schedulers = SchedulerFactory(dict(pipe.scheduler.config))
    for steps in (1, 2, 3):
        with pytest.raises(InvalidRequestError) as caught:
            check_schedule(spec, _params(num_inference_steps=steps), schedulers)
        assert caught.value.param == "num_inference_steps"
        assert "broadcast" not in caught.value.message
        answer = from_exception(caught.value)
        assert (answer.status, answer.param) == (400, "num_inference_steps")
    check_schedule(spec, _params(num_inference_steps=4), schedulers)
    check_schedule(spec, _params(num_inference_steps=1, scheduler="euler"), schedulers)
    with pytest.raises(InvalidRequestError) as caught:  # an edit that runs no step, refused before the VAE
        check_schedule(spec, _params(num_inference_steps=2, scheduler="euler", strength=0.1), schedulers, edit=True)
    assert caught.value.param == "strength"


# --- dgate serve's address ----------------------------------------------------------------------------------


def test_dgate_serve_honours_dgate_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DGATE_HOST", "0.0.0.0")
    monkeypatch.setenv("DGATE_PORT", "9123")
    args = build_parser().parse_args(["serve"])
    settings = FrontendSettings(**frontend_overrides(args, "127.0.0.1:8101"))
    assert (settings.host, settings.port, settings.triton_url) == ("0.0.0.0", 9123, "127.0.0.1:8101")
    args = build_parser().parse_args(["serve", "--host", "127.0.0.2", "--port", "9200"])  # flags win
    settings = FrontendSettings(**frontend_overrides(args, "127.0.0.1:8101"))
    assert (settings.host, settings.port) == ("127.0.0.2", 9200)
    monkeypatch.delenv("DGATE_HOST")
    monkeypatch.delenv("DGATE_PORT")
    settings = FrontendSettings(**frontend_overrides(build_parser().parse_args(["serve"]), "127.0.0.1:8101"))
    assert (settings.host, settings.port) == ("127.0.0.1", 9000)  # the defaults stay


def test_dgate_frontend_reads_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DGATE_PORT", "9124")
    args = build_parser().parse_args(["frontend", "--triton-url", "10.0.0.1:8001"])
    settings = FrontendSettings(**frontend_overrides(args))
    assert (settings.port, settings.triton_url) == (9124, "10.0.0.1:8001")


# --- the OpenAPI document ------------------------------------------------------------------------------------


def test_openapi_lists_the_errors_the_api_gives() -> None:
    from dgate.frontend.app import create_app

    app = create_app(FrontendSettings(video_workers=0), engine=object())  # type: ignore[arg-type]  # never called
    document = app.openapi()
    assert app.openapi() is document
    assert "422" not in str(document["paths"])  # validation errors are 400s
    assert "HTTPValidationError" not in document["components"]["schemas"]
    error = document["components"]["schemas"]["ErrorResponse"]
    assert set(error["properties"]["error"]["properties"]) == {"message", "type", "param", "code"}
    for path, method in (("/v1/images/generations", "post"), ("/v1/images/edits", "post"), ("/v1/videos", "post"),
                         ("/v1/models", "get")):
        responses = document["paths"][path][method]["responses"]
        assert {"200", "400", "401", "404", "429", "500", "503"} <= set(responses), (path, sorted(responses))
        assert responses["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}
    files = [p for p in document["paths"] if p.startswith("/v1/files/")]
    assert files and all("401" not in op["responses"] for p in files for op in document["paths"][p].values())
