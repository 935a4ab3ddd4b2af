"""Video end to end through a real tritonserver: the decoupled video ensembles against diffusers.

A video request is one gRPC stream: a `progress` response per denoising step, then the frames.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dgate.core.tensors import infer_inputs, request_tensors
from dgate.reference import diffusers_video

# FP32 ONNX Runtime in Triton vs PyTorch diffusers: the issue allows 2/255.
MAX_PIXEL_DIFFERENCE = 2
BASE = {"prompt": "a paper boat on a river", "negative_prompt": "", "num_images": 1, "num_inference_steps": 3,
        "guidance_scale": 7.5, "seed": 4, "height": 64, "width": 64, "scheduler": "default",
        "max_sequence_length": 0, "true_cfg_scale": 1.0, "lora": "", "num_frames": 6, "fps": 8,
        "motion_bucket_id": 127, "noise_aug_strength": 0.02, "decode_chunk_size": 0}
IMAGE = (np.random.default_rng(7).random((56, 72, 3)) * 255).astype(np.uint8)  # not the video's size


def stream_video(url: str, model: str, values: dict[str, Any]) -> tuple[list[float], np.ndarray | None, str | None]:
    """(progress values, frames, error) of one request over Triton's gRPC stream."""
    takes_image = "image" in values
    inputs = infer_inputs(grpcclient, values,
                          tensors=request_tensors("image-to-video" if takes_image else "text-to-video", takes_image))
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(model, inputs, outputs=[grpcclient.InferRequestedOutput("progress"),
                                                         grpcclient.InferRequestedOutput("video")])
        progress: list[float] = []
        while True:
            result, error = responses.get(timeout=120)
            if error is not None:
                return progress, None, error.message()
            progress.append(float(result.as_numpy("progress")[0]))
            if result.as_numpy("video") is not None:
                return progress, result.as_numpy("video"), None
    finally:
        client.stop_stream()
        client.close()


@pytest.fixture(scope="module")
def pipes(tiny_models: dict[str, Path]) -> dict[str, Any]:
    from diffusers import DiffusionPipeline

    return {name: DiffusionPipeline.from_pretrained(str(tiny_models[name]))
            for name in ("tiny-animatediff", "tiny-svd")}


@pytest.mark.parametrize(
    ("model", "overrides"),
    [("tiny-animatediff", {}),
     ("tiny-animatediff", {"scheduler": "euler", "negative_prompt": "blurry", "height": 48, "width": 80,
                           "decode_chunk_size": 4, "seed": 11}),
     ("tiny-svd", {"guidance_scale": 3.0, "fps": 7, "image": IMAGE}),
     ("tiny-svd", {"guidance_scale": 2.0, "fps": 12, "motion_bucket_id": 30, "noise_aug_strength": 0.1,
                   "decode_chunk_size": 3, "num_frames": 5, "height": 48, "image": IMAGE})],
)
def test_served_video_equals_diffusers(triton: Any, pipes: dict[str, Any], model: str, overrides: dict) -> None:
    values = BASE | overrides
    progress, video, error = stream_video(triton.ports.grpc_url, model, values)
    assert error is None
    assert video is not None and video.dtype == np.uint8
    assert video.shape == (1, values["num_frames"], values["height"], values["width"], 3)
    expected = diffusers_video(pipes[model], values, values.get("image"))
    assert np.abs(video.astype(int) - expected.astype(int)).max() <= MAX_PIXEL_DIFFERENCE
    assert expected.std() > 5
    # One progress response per step, increasing to 1, then the final one with the frames.
    steps = values["num_inference_steps"]
    assert progress == pytest.approx([(i + 1) / steps for i in range(steps)] + [1.0])


def test_bad_video_requests_end_the_stream_with_the_reason(triton: Any) -> None:
    url = triton.ports.grpc_url
    cases = [("tiny-animatediff", {"num_frames": 64}, "num_frames must be between 2 and 32"),
             ("tiny-animatediff", {"num_images": 2}, "n must be between 1 and 1"),
             ("tiny-animatediff", {"lora": '[{"path": "a.safetensors", "scale": 1.0}]'}, "without LoRA support"),
             ("tiny-svd", {"image": IMAGE, "scheduler": "euler"}, "scheduler must be one of default")]
    for model, overrides, message in cases:
        _, video, error = stream_video(url, model, BASE | overrides)
        assert video is None and error is not None and message in error


def unet_executions(url: str, model: str = "tiny-animatediff_unet") -> int:
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("execution_count", 0))


def test_dgate_cancel_stops_a_running_video_within_a_step(triton: Any) -> None:
    """Cancelling the stream alone does not reach an ensemble step in Triton 2.51 (the denoiser ran
    on: measured); `dgate_cancel` with the request id does, within one step (Triton's statistics)."""
    url, request_id = triton.ports.grpc_url, "cancel-me"
    values = BASE | {"num_inference_steps": 100, "num_frames": 16}
    inputs = infer_inputs(grpcclient, values, tensors=request_tensors("text-to-video"))
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    before = unet_executions(url)
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer("tiny-animatediff", inputs, request_id=request_id)
        for _ in range(3):  # three steps done
            assert responses.get(timeout=60)[1] is None
        cancel = grpcclient.InferInput("request_id", [1], "BYTES")
        cancel.set_data_from_numpy(np.array([request_id.encode()], dtype=np.object_))
        assert client.infer("dgate_cancel", [cancel]).as_numpy("cancelled")[0]
        _, error = responses.get(timeout=60)
        while error is None:  # progress already on its way, then the end
            _, error = responses.get(timeout=60)
        assert "cancelled" in error.message()
        ran = unet_executions(url) - before
        time.sleep(1.0)
        assert unet_executions(url) - before == ran and 3 <= ran <= 5  # stopped within a step or two
    finally:
        client.stop_stream()
        client.close()


def test_video_ensembles_need_the_stream(triton: Any) -> None:
    """Decoupled: Triton's HTTP endpoint refuses them (the frontend uses the gRPC stream)."""
    client = httpclient.InferenceServerClient(triton.ports.http_url)
    try:
        with pytest.raises(InferenceServerException, match="decoupled"):
            client.infer("tiny-animatediff", infer_inputs(httpclient, BASE, tensors=request_tensors("text-to-video")))
        config = client.get_model_config("tiny-svd")
        assert config["parameters"]["task"]["string_value"] == "image-to-video"
        assert {o["name"] for o in config["output"]} == {"video", "progress"}
    finally:
        client.close()

