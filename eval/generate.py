"""Images through the served OpenAI Images API, with fixed seeds, timed per request.

Every model renders prompt i with seed `base_seed + i`, so images of different models for the same
index are comparable (LPIPS/PSNR against the reference model, grids).
"""

from __future__ import annotations

import base64
import io
import logging
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openai
from openai import OpenAI
from PIL import Image
from tqdm import tqdm

from dgate.eval.errors import EvalServerError

logger = logging.getLogger(__name__)
UNKNOWN_PRECISION = "unknown"


@dataclass(frozen=True)
class GeneratedImage:
    index: int  # position in the prompt list; also the file name and the grid it lands in
    prompt: str
    seed: int
    path: Path
    latency_s: float  # wall clock of the one HTTP request that made it


@dataclass(frozen=True)
class ModelRun:
    """One model's images and timings (requests made `concurrency` at a time)."""

    model: str
    precision: str
    images: tuple[GeneratedImage, ...]
    wall_s: float  # first request sent -> last answer received
    concurrency: int

    @property
    def latencies_ms(self) -> list[float]:
        return [image.latency_s * 1000.0 for image in self.images]

    @property
    def latency_ms_mean(self) -> float:
        return float(np.mean(self.latencies_ms))

    @property
    def latency_ms_p95(self) -> float:
        return float(np.percentile(self.latencies_ms, 95))

    @property
    def throughput_ips(self) -> float:
        return len(self.images) / self.wall_s if self.wall_s > 0 else float("nan")


@dataclass(frozen=True)
class GenerationOptions:
    """The request parameters shared by every model; None leaves the server's default."""

    seed: int = 0
    size: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    concurrency: int = 1
    warmup: int = 1


def model_dir_name(model: str) -> str:
    """A model id as one folder name (ids may hold '/' or ':')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", model)


def make_client(base_url: str, api_key: str, timeout_s: float) -> OpenAI:
    # No retries: a retried request would hide a failure and distort the latency it reports.
    return OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)


def _server_error(error: openai.OpenAIError, base_url: str, what: str) -> EvalServerError:
    if isinstance(error, openai.APIConnectionError):  # includes timeouts
        return EvalServerError(f"cannot reach the server at {base_url} ({what}): {error}")
    if isinstance(error, openai.APIStatusError):
        return EvalServerError(f"{what}: the server at {base_url} answered {error.status_code}: "
                               f"{_error_text(error.body) or error.message}")
    return EvalServerError(f"{what}: {error}")


def _error_text(body: object) -> str:
    """The message of an error body: OpenAI's {"error": {"message": ...}} or FastAPI's {"detail": ...}."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        text = inner.get("message") if isinstance(inner, dict) else None
        return " ".join(str(text or body.get("detail") or "").split())[:300]
    return ""


def served_models(client: OpenAI) -> dict[str, dict[str, Any]]:
    """`GET {base_url}/models`: model id -> its object's fields (D-Gate adds family, precision, ...)."""
    try:
        page = client.models.list()
    except openai.OpenAIError as error:
        raise _server_error(error, str(client.base_url), "GET /models") from None
    return {model.id: model.model_dump() for model in page.data}


def precision_labels(served: Mapping[str, Mapping[str, Any]], models: Sequence[str],
                     overrides: Mapping[str, str]) -> dict[str, str]:
    """The label each model is reported under: `--label` first, else the server's `precision` field."""
    labels = {}
    for model in models:
        precision = served.get(model, {}).get("precision")
        labels[model] = overrides.get(model) or (str(precision) if precision else UNKNOWN_PRECISION)
    return labels


def check_models_served(served: Mapping[str, object], models: Sequence[str], base_url: str) -> None:
    """Fail before any image is made when a listed model is not served (the message lists what is)."""
    missing = [model for model in models if model not in served]
    if missing:
        raise EvalServerError(f"model(s) {', '.join(missing)} not served at {base_url}; "
                              f"served: {', '.join(sorted(served)) or 'none'}")


def _request(client: OpenAI, model: str, prompt: str, seed: int, options: GenerationOptions) -> tuple[bytes, float]:
    extra: dict[str, Any] = {"seed": seed}  # D-Gate extensions travel in the body, beside OpenAI's fields
    if options.steps is not None:
        extra["num_inference_steps"] = options.steps
    if options.guidance_scale is not None:
        extra["guidance_scale"] = options.guidance_scale
    kwargs: dict[str, Any] = {"size": options.size} if options.size else {}
    start = time.perf_counter()
    try:
        response = client.images.generate(model=model, prompt=prompt, n=1, response_format="b64_json",
                                          extra_body=extra, **kwargs)
    except openai.OpenAIError as error:
        raise _server_error(error, str(client.base_url), f"model {model}") from None
    latency = time.perf_counter() - start
    data = response.data[0].b64_json if response.data else None
    if not data:
        raise EvalServerError(f"model {model}: the server returned no b64_json image")
    return base64.b64decode(data), latency


def _save_png(data: bytes, path: Path) -> None:
    # Decoded and re-encoded, so the file is a PNG whatever output_format the server picked.
    with Image.open(io.BytesIO(data)) as image:
        image.convert("RGB").save(path, format="PNG")


def generate_model(client: OpenAI, model: str, precision: str, prompts: Sequence[str], out_dir: Path,
                   options: GenerationOptions) -> ModelRun:
    """Render every prompt with `model`; images go to `out_dir/<index:04d>.png`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.png"):  # a previous run's images must not mix with this one's
        stale.unlink()
    for _ in range(options.warmup):
        _request(client, model, prompts[0], options.seed, options)

    def one(index: int) -> GeneratedImage:
        seed = options.seed + index
        data, latency = _request(client, model, prompts[index], seed, options)
        path = out_dir / f"{index:04d}.png"
        _save_png(data, path)
        return GeneratedImage(index=index, prompt=prompts[index], seed=seed, path=path, latency_s=latency)

    results: list[GeneratedImage] = []
    with tqdm(total=len(prompts), desc=model, unit="img", leave=False) as progress:
        start = time.perf_counter()
        if options.concurrency == 1:
            for index in range(len(prompts)):
                results.append(one(index))
                progress.update()
        else:
            with ThreadPoolExecutor(max_workers=options.concurrency) as pool:  # one client, shared
                futures = [pool.submit(one, index) for index in range(len(prompts))]
                for future in as_completed(futures):
                    results.append(future.result())
                    progress.update()
        wall = time.perf_counter() - start
    results.sort(key=lambda image: image.index)
    return ModelRun(model=model, precision=precision, images=tuple(results), wall_s=wall,
                    concurrency=options.concurrency)


def generate_all(client: OpenAI, models: Sequence[str], labels: Mapping[str, str], prompts: Sequence[str],
                 images_dir: Path, options: GenerationOptions) -> list[ModelRun]:
    """Each model in turn (never overlapping, so one model's timings are not another's load)."""
    runs = []
    for model in models:
        run = generate_model(client, model, labels[model], prompts, images_dir / model_dir_name(model), options)
        logger.info("%s: %d images, %.1f ms mean, %.2f images/s", model, len(run.images), run.latency_ms_mean,
                    run.throughput_ips)
        runs.append(run)
    return runs
