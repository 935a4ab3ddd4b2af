"""The W&B serving log (frontend/serving_log.py) of a frontend on a fake engine: a real offline wandb run,
read back from its `.wandb` file after the frontend stopped, holds one row per request with its
parameters, status and latencies, and the sampled images; a blocked logger never slows a request and
its dropped rows are counted; without wandb the frontend serves without the log."""

from __future__ import annotations

import json
import logging
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from frontend_fixtures import start_frontend
from test_frontend_metrics_unit import MetricsEngine, scrape, settings_in, value, wait_video

import dgate.frontend.serving_log as serving_log
from dgate.frontend.app import create_app
from dgate.frontend.engine import EngineError
from dgate.frontend.settings import FrontendSettings

PROJECT = "dgate-serving-test"


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B offline and silent, with every folder it writes inside tmp_path (nothing in $HOME)."""
    home = tmp_path / "wandb-home"
    for name, setting in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_DIR", str(home)),
                          ("WANDB_CACHE_DIR", str(home / "cache")), ("WANDB_CONFIG_DIR", str(home / "config")),
                          ("WANDB_DATA_DIR", str(home / "data"))):
        monkeypatch.setenv(name, setting)
    return home


def wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a `.wandb` file: a 7-byte W&B header, then LevelDB's log format (32 KiB blocks of
    chunks, each with a 7-byte header: CRC, length, type full/first/middle/last)."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    position, pending = 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's zero-filled tail
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        elif kind in (3, 4):  # middle, last
            pending += chunk
        if kind in (1, 4):
            yield pending


def history_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows `run.log` wrote, as {key: value} (nested keys joined with '/')."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    rows = []
    for raw in wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_requests_are_logged_to_an_offline_wandb_run(tmp_path: Path, wandb_env: Path) -> None:
    engine = MetricsEngine()
    settings = settings_in(tmp_path, wandb_project=PROJECT, wandb_dir=str(tmp_path / "wandb"), wandb_sample_every=2)
    base_url, stop = start_frontend(settings, engine)  # type: ignore[arg-type]  # a fake engine
    try:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            body = {"prompt": "a fox", "size": "64x48", "num_inference_steps": 5, "guidance_scale": 6.0,
                    "scheduler": "ddim"}
            assert http.post("/v1/images/generations", json=body | {"seed": 1, "n": 2}).status_code == 200
            assert http.post("/v1/images/generations", json=body | {"seed": 2, "lora": "fox"}).status_code == 200
            engine.failure = EngineError("the engine broke")
            assert http.post("/v1/images/generations", json=body | {"seed": 3}).status_code == 500
            engine.failure = None
            assert http.post("/v1/images/generations", json=body | {"seed": 4}).status_code == 200
            job = http.post("/v1/videos", json={"model": "tiny-animatediff", "prompt": "waves", "seed": 5}).json()
            assert wait_video(http, job["id"])["status"] == "completed"
    finally:
        stop()  # the lifespan's end finishes the run

    (run_dir,) = (tmp_path / "wandb" / "wandb").glob("offline-run-*")
    rows = history_rows(run_dir)
    assert [(row["model"], row["kind"], row["status"], row["seed"]) for row in rows] == [
        ("tiny-sd", "image", "ok", 1), ("tiny-sd", "image", "ok", 2), ("tiny-sd", "image", "engine_error", 3),
        ("tiny-sd", "image", "ok", 4), ("tiny-animatediff", "video", "ok", 5)]
    first = rows[0]
    assert {key: first[key] for key in ("width", "height", "n", "steps", "guidance", "scheduler", "lora")} == {
        "width": 64, "height": 48, "n": 2, "steps": 5, "guidance": 6.0, "scheduler": "ddim", "lora": ""}
    assert first["megapixels"] == pytest.approx(2 * 64 * 48 / 1e6)
    assert json.loads(rows[1]["lora"])[0]["path"].endswith("fox.safetensors")
    for row in rows:
        assert row["latency_s"] >= row["queue_s"] >= 0 and "prompt" not in row, row
    assert all(row["triton_s"] > 0 and row["encode_s"] > 0 for row in rows if row["status"] == "ok")
    assert "triton_s" not in rows[2] and rows[4]["frames"] == 8
    # One sample every 2 records, ok ones only: records 0 and 4 (record 2 failed).
    sampled = [row["seed"] for row in rows if "sample/path" in row]
    assert sampled == [1, 5]
    assert rows[0]["sample/width"] == 64 and rows[0]["sample/height"] == 48
    assert len(list((run_dir / "files" / "media" / "images").glob("*.png"))) == 2


class BlockedWriter:
    """A W&B that hangs: `log` waits until `release` is set."""

    instances: list[BlockedWriter] = []

    def __init__(self, *args: Any) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.rows: list[dict[str, Any]] = []
        self.closed = False
        BlockedWriter.instances.append(self)

    def log(self, row: dict[str, Any], image: np.ndarray | None) -> None:
        self.entered.set()
        self.release.wait(30)
        self.rows.append(row)

    def close(self) -> None:
        self.closed = True


def test_a_blocked_wandb_neither_slows_nor_fails_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    BlockedWriter.instances.clear()
    monkeypatch.setattr(serving_log, "WandbWriter", BlockedWriter)
    settings = settings_in(tmp_path, wandb_project=PROJECT, wandb_queue_size=2)
    base_url, stop = start_frontend(settings, MetricsEngine())  # type: ignore[arg-type]  # a fake engine
    try:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            body = {"prompt": "a fox", "size": "64x48", "num_inference_steps": 2}
            assert http.post("/v1/images/generations", json=body).status_code == 200
            (writer,) = BlockedWriter.instances
            assert writer.entered.wait(10)  # the logging thread is stuck in W&B with the first row
            latencies = []
            for _ in range(5):
                started = time.perf_counter()
                assert http.post("/v1/images/generations", json=body).status_code == 200
                latencies.append(time.perf_counter() - started)
            assert max(latencies) < 2.0, latencies  # the writer stays blocked for 30 s
            samples = scrape(http)
            assert value(samples, "dgate_frontend_wandb_dropped_total", reason="queue_full") == 3  # 2 queued
            assert value(samples, "dgate_frontend_generation_seconds_count", model="tiny-sd", kind="image",
                         status="ok") == 6
        writer.release.set()
    finally:
        stop()
    assert len(writer.rows) == 3 and writer.closed  # the blocked one and the two queued, then the run finished


def test_a_wandb_that_cannot_start_drops_rows_and_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> None:
        raise RuntimeError("api key missing")

    monkeypatch.setattr(serving_log, "WandbWriter", refuse)
    base_url, stop = start_frontend(settings_in(tmp_path, wandb_project=PROJECT), MetricsEngine())  # type: ignore[arg-type]
    try:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            for _ in range(3):
                assert http.post("/v1/images/generations", json={"prompt": "a", "size": "64x48"}).status_code == 200
            deadline = time.monotonic() + 10  # the logging thread counts them as it takes them
            while value(samples := scrape(http), "dgate_frontend_wandb_dropped_total", reason="error") < 3:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert value(samples, "dgate_frontend_wandb_dropped_total", reason="error") == 3
            assert value(samples, "dgate_frontend_generation_seconds_count", model="tiny-sd", kind="image",
                         status="ok") == 3
    finally:
        stop()


def test_without_wandb_installed_the_log_is_off_with_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails; find_spec says None
    with caplog.at_level(logging.ERROR, logger="dgate.frontend.serving_log"):
        app = create_app(FrontendSettings(wandb_project=PROJECT, jobs_db=f"sqlite://{tmp_path / 'jobs.db'}"),
                         MetricsEngine())  # type: ignore[arg-type]  # a fake engine
    assert "wandb is not installed" in caplog.text
    assert app.state.dgate.metrics.sinks == []
    assert create_app(FrontendSettings(), MetricsEngine()).state.dgate.metrics.sinks == []  # type: ignore[arg-type]
