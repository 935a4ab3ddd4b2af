"""Streamed image requests (Server-Sent Events) against a fake engine that denoises step by step:
the official `openai` client's stream iteration, the wire format, errors mid-stream and cancellation
when the client goes away. `SteppingEngine` is shared with the edits and WebSocket tests."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import urllib.parse
from dataclasses import dataclass, replace
from http.client import HTTPConnection
from typing import Any

import numpy as np
import openai
import pytest
from frontend_fixtures import FakePipelines, assert_error_body, fake_frontend
from openai import OpenAI
from PIL import Image
from test_frontend_unit import SD_LIMITS, fake_images

from dgate.core.capabilities import Capabilities
from dgate.core.params import GenerationParams
from dgate.core.served_pipeline import ServedPipeline
from dgate.frontend.engine import EditImages, EngineError, PartialCallback, StepCallback
from dgate.frontend.errors import OpenAIError
from dgate.frontend.streaming import KEEPALIVE, Done, event_stream, pump, sse_event

STREAMING = ServedPipeline(SD_LIMITS, Capabilities(edits=True), streams=True)
BLOCKING = ServedPipeline(SD_LIMITS, Capabilities(edits=False), streams=False)  # the blocking denoiser, no edits
VIDEO = ServedPipeline(replace(SD_LIMITS, default_num_frames=8, max_num_frames=16, default_fps=8),
                       Capabilities(task="text-to-video"))


@dataclass(frozen=True)
class Call:
    name: str
    params: GenerationParams
    edit: EditImages | None
    partial_images: int
    on_step: bool
    on_partial: bool


class SteppingEngine(FakePipelines):
    """An `ImageEngine` that runs int(steps x strength) steps, awaiting `on_step` after each and
    `on_partial` at evenly spaced steps, as the streaming denoiser does. Edits return the input image
    (n copies), generations `fake_images`; previews are the final images scaled by the progress.

    `failure` is raised after the first preview (or step); `block` holds the request after it until
    cancelled; `cancelled` is set when a request saw CancelledError."""

    def __init__(self) -> None:
        self.pipelines: dict[str, ServedPipeline] = {"tiny-sd": STREAMING, "tiny-blocking": BLOCKING,
                                                       "tiny-video": VIDEO}
        self.calls: list[Call] = []
        self.failure: Exception | None = None
        self.block = False
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def reset(self) -> None:
        self.calls.clear()
        self.failure, self.block = None, False
        self.started.clear()
        self.cancelled.clear()

    async def ready(self) -> bool:
        return True

    async def generate(self, name: str, params: GenerationParams, *, edit: EditImages | None = None,
                       partial_images: int = 0, on_step: StepCallback | None = None,
                       on_partial: PartialCallback | None = None) -> np.ndarray:
        pipeline = self.pipelines[name]
        assert not (partial_images or on_step) or pipeline.streams, "streaming asked of a blocking pipeline"
        assert edit is None or pipeline.capabilities.edits
        assert (on_partial is not None) == (partial_images > 0)
        self.calls.append(Call(name, params, edit, partial_images, on_step is not None, on_partial is not None))
        self.started.set()
        if edit is None:
            final = fake_images(params)
        else:
            assert edit.image.shape == (params.height, params.width, 3) and edit.image.dtype == np.uint8
            final = np.repeat(edit.image[None], params.num_images, axis=0)
        total = int(params.num_inference_steps * params.strength)
        preview_steps = [round((i + 1) * total / (partial_images + 1)) for i in range(partial_images)]
        try:
            for step in range(1, total + 1):
                await asyncio.sleep(0)
                if on_step is not None:
                    await on_step(step, total)
                for index in [i for i, at in enumerate(preview_steps) if at == step]:
                    assert on_partial is not None
                    await on_partial(index, (final * (step / total)).astype(np.uint8))
                if step == max(preview_steps[:1] or [1]):  # after the first preview (or step)
                    if self.failure is not None:
                        raise self.failure
                    while self.block:
                        await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return final


served, engine, client = fake_frontend(SteppingEngine)


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def png(image: np.ndarray | Image.Image) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- the SSE helpers --------------------------------------------------------------------------------


def test_sse_event_is_named_by_its_type_on_one_data_line() -> None:
    assert sse_event({"type": "image_generation.completed", "b64_json": "AA=="}) == (
        b'event: image_generation.completed\ndata: {"type":"image_generation.completed","b64_json":"AA=="}\n\n')


async def test_pump_yields_emitted_items_keepalives_then_the_result() -> None:
    release = asyncio.Event()

    async def work(emit: Any) -> str:
        emit("a")
        await release.wait()
        emit("b")
        return "done"

    items = []
    async for item in pump(work, keepalive_s=0.01):
        items.append(item)
        if item is None:
            release.set()
    assert items[0] == "a" and None in items and items[-2:] == ["b", Done("done")]


async def test_closing_the_pump_cancels_the_work() -> None:
    cancelled = asyncio.Event()

    async def work(emit: Any) -> None:
        emit("first")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    items = pump(work)
    assert await items.__anext__() == "first"
    await items.aclose()
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_event_stream_ends_with_an_error_event() -> None:
    async def work(emit: Any) -> list[bytes]:
        emit(b"partial")
        raise EngineError("the UNet failed")

    def on_error(exc: Exception) -> OpenAIError:
        assert isinstance(exc, EngineError)
        return OpenAIError(500, exc.message, type="server_error", code="engine_error")

    events = [event async for event in event_stream(work, on_error=on_error)]
    assert events[0] == b"partial" and len(events) == 2
    assert events[1].startswith(b"event: error\ndata: ")
    assert json.loads(events[1].split(b"data: ")[1]) == {"type": "error", "error": {
        "message": "the UNet failed", "type": "server_error", "param": None, "code": "engine_error"}}
    assert KEEPALIVE.startswith(b":")  # an SSE comment: clients skip it


# --- generations ------------------------------------------------------------------------------------


def test_generation_streams_partial_images_then_one_completed_event_per_image(
        client: OpenAI, engine: SteppingEngine) -> None:
    stream = client.images.generate(model="tiny-sd", prompt="a lighthouse", n=2, size="64x32", stream=True,
                                    partial_images=2, output_format="webp", extra_body={"seed": 7})
    events = list(stream)
    assert [event.type for event in events] == ["image_generation.partial_image"] * 4 + [
        "image_generation.completed"] * 2
    assert [event.partial_image_index for event in events[:4]] == [0, 0, 1, 1]  # one per image per index
    for event in events:
        assert (event.size, event.output_format, event.quality, event.background) == ("64x32", "webp", "medium",
                                                                                       "opaque")
        assert decode(event.b64_json).format == "WEBP" and decode(event.b64_json).size == (64, 32)
        assert isinstance(event.created_at, int)
    final = fake_images(engine.calls[0].params)
    for index, event in enumerate(events[4:]):
        assert event.usage.total_tokens == 0 and event.usage.input_tokens_details.text_tokens == 0
        assert event.model_extra == {"seed": 7}
        assert np.abs(np.asarray(decode(event.b64_json), np.int16) - final[index]).max() <= 8  # lossy webp
    (call,) = engine.calls
    assert (call.partial_images, call.on_partial, call.on_step, call.params.num_images) == (2, True, False, 2)


def test_stream_without_partial_images_serves_a_blocking_pipeline_too(client: OpenAI, engine: SteppingEngine) -> None:
    events = list(client.images.generate(model="tiny-blocking", prompt="a fox", stream=True, user="u-1"))
    assert [event.type for event in events] == ["image_generation.completed"]
    assert events[0].safety_identifier == "u-1"
    assert (engine.calls[0].partial_images, engine.calls[0].on_partial) == (0, False)


def test_sse_wire_format_and_headers(served: tuple[str, SteppingEngine], engine: SteppingEngine) -> None:
    parts = urllib.parse.urlsplit(served[0])
    connection = HTTPConnection(parts.netloc, timeout=10)
    try:
        connection.request("POST", "/v1/images/generations", json.dumps({
            "model": "tiny-sd", "prompt": "a fox", "stream": True, "partial_images": 1,
            "num_inference_steps": 4}), {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("content-type").startswith("text/event-stream")
        assert response.getheader("cache-control") == "no-cache"
        body = response.read().decode()
    finally:
        connection.close()
    blocks = [block for block in body.split("\n\n") if block]
    names = [block.splitlines()[0] for block in blocks]
    assert names == ["event: image_generation.partial_image", "event: image_generation.completed"]
    for block in blocks:
        event, data = block.splitlines()
        assert json.loads(data.removeprefix("data: "))["type"] == event.removeprefix("event: ")
    assert "[DONE]" not in body


def test_non_streamed_generation_calls_the_engine_as_before(client: OpenAI, engine: SteppingEngine) -> None:
    result = client.images.generate(model="tiny-sd", prompt="a fox", n=2)
    assert len(result.data) == 2 and result.size == "64x48"
    (call,) = engine.calls
    assert (call.edit, call.partial_images, call.on_step, call.on_partial) == (None, 0, False, False)


@pytest.mark.parametrize(("kwargs", "param", "words"), [
    ({"model": "tiny-blocking", "stream": True, "partial_images": 1}, "partial_images", "blocking denoiser"),
    ({"partial_images": 2}, "partial_images", "stream=true"),
    ({"stream": True, "response_format": "url"}, "response_format", "b64_json"),
    ({"stream": True, "partial_images": 4}, "partial_images", "partial_images"),
    ({"model": "tiny-video", "stream": True}, "model", "videos"),
])
def test_streaming_refusals_are_400_before_any_event(client: OpenAI, engine: SteppingEngine,
                                                      kwargs: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(**({"model": "tiny-sd", "prompt": "a fox"} | kwargs))
    assert refused.value.param == param and words in refused.value.message
    assert_error_body(refused.value.response.content, param=param)
    assert not engine.calls


def test_failure_mid_stream_is_an_error_event_the_client_raises(client: OpenAI, engine: SteppingEngine) -> None:
    engine.failure = EngineError("the denoiser ran out of memory")
    stream = client.images.generate(model="tiny-sd", prompt="a fox", stream=True, partial_images=2)
    seen = []
    with pytest.raises(openai.APIError) as failed:
        for event in stream:
            seen.append(event.type)
    assert seen == ["image_generation.partial_image"]
    assert not isinstance(failed.value, openai.APIStatusError)  # the answer was a 200: the error is in the stream
    assert failed.value.message == "the denoiser ran out of memory"
    assert failed.value.body == {"message": "the denoiser ran out of memory", "type": "server_error", "param": None,
                                 "code": "engine_error"}


def test_a_client_that_disconnects_cancels_the_generation(client: OpenAI, engine: SteppingEngine) -> None:
    engine.block = True
    stream = client.images.generate(model="tiny-sd", prompt="a fox", stream=True, partial_images=1)
    assert next(iter(stream)).type == "image_generation.partial_image"
    stream.close()
    assert engine.cancelled.wait(5), "the engine call was not cancelled"


# --- edits --------------------------------------------------------------------------------------------


def test_edit_streams_image_edit_events(client: OpenAI, engine: SteppingEngine) -> None:
    image = np.full((48, 64, 3), (200, 40, 10), np.uint8)
    events = list(client.images.edit(image=("in.png", png(image)), prompt="make it blue", model="tiny-sd",
                                     stream=True, partial_images=2, n=2))
    assert [event.type for event in events] == ["image_edit.partial_image"] * 4 + ["image_edit.completed"] * 2
    assert [event.partial_image_index for event in events[:4]] == [0, 0, 1, 1]
    for event in events[4:]:
        assert event.size == "64x48" and np.array_equal(np.asarray(decode(event.b64_json)), image)
    (call,) = engine.calls
    assert call.edit is not None and call.partial_images == 2 and call.params.strength == 0.8
