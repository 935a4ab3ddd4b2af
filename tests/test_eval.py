"""`dgate eval` without Triton: each metric on synthetic images with random weights (scores meaningless, code
checked), the errors, the report and the offline W&B run, and `run_eval` against a STUB OpenAI server.

The real end-to-end run against the Triton-served frontend lives with the serving tests.
"""

from __future__ import annotations

import base64
import io
import json
import math
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from dgate.eval.cli import add_eval_parser
from dgate.eval.config import EvalConfig, parse_labels, parse_metrics
from dgate.eval.errors import EvalConfigError, EvalServerError, MetricWeightsError
from dgate.eval.generate import GeneratedImage, ModelRun
from dgate.eval.random_weights import is_random_weights, write_random_metric_weights
from dgate.eval.results import ModelRow

CLIP_ARCH = "ViT-S-32"  # the smallest plain open_clip ViT config: ~63 M parameters, ~1 s to load on 2 cores


@pytest.fixture(scope="module")
def metric_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_random_metric_weights(tmp_path_factory.mktemp("metric-weights"), clip_arch=CLIP_ARCH)


@pytest.fixture(scope="module")
def clip_scorer(metric_weights: dict[str, Path]) -> Any:
    from dgate.eval.metrics import load_clip

    return load_clip(metric_weights["clip"], CLIP_ARCH)


@pytest.fixture(scope="module")
def lpips_scorer(metric_weights: dict[str, Path]) -> Any:
    from dgate.eval.metrics import load_lpips

    return load_lpips(metric_weights["lpips"])


def _noise_images(count: int, seed: int, size: int = 64) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def _smooth_images(count: int, seed: int, size: int = 64) -> list[Image.Image]:
    """Gradients with random colours: natural-ish images, far from uniform noise in feature space."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    images = []
    for _ in range(count):
        start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        pixels = start + (end - start) * ramp[:, None, None] * ramp[None, :, None]
        images.append(Image.fromarray(pixels.astype(np.uint8)))
    return images


def _shifted(image: Image.Image, noise: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------------------------- metrics
def test_random_weights_files_and_manifest(metric_weights: dict[str, Path]) -> None:
    assert set(metric_weights) == {"clip", "inception", "lpips"}
    assert all(path.is_file() and is_random_weights(path) for path in metric_weights.values())
    assert not is_random_weights(metric_weights["clip"].parent / "elsewhere.pt")


def test_lpips_random_weights_zero_for_identical_images(lpips_scorer: Any) -> None:
    images = _smooth_images(3, seed=1)
    assert lpips_scorer.distances(images, images) == pytest.approx([0.0] * 3, abs=1e-6)
    rng = np.random.default_rng(2)
    small = [_shifted(image, rng.integers(-8, 9, (64, 64, 3))) for image in images]
    large = [_shifted(image, rng.integers(-80, 81, (64, 64, 3))) for image in images]
    small_d, large_d = lpips_scorer.distances(small, images), lpips_scorer.distances(large, images)
    assert all(0 < s < big for s, big in zip(small_d, large_d, strict=True)), (small_d, large_d)


def test_lpips_backbone_accepts_torchvision_alexnet_keys() -> None:
    import torch

    from dgate.eval.metrics import lpips_backbone_state_dict

    tensor = torch.zeros(1)
    mapped = lpips_backbone_state_dict({"features.0.weight": tensor, "features.3.bias": tensor,
                                        "features.6.weight": tensor, "features.8.weight": tensor,
                                        "features.10.bias": tensor, "classifier.1.weight": tensor,
                                        "net.slice2.3.weight": tensor, "10.weight": tensor})
    assert set(mapped) == {"slice1.0.weight", "slice2.3.bias", "slice3.6.weight", "slice4.8.weight",
                           "slice5.10.bias", "slice2.3.weight", "slice5.10.weight"}


def test_psnr_identical_is_inf_and_known_noise_gives_known_value() -> None:
    from dgate.eval.metrics import psnr

    image = _smooth_images(1, seed=3)[0]
    assert psnr(image, image) == math.inf
    # +/-5 on every value (no clipping: the gradient stays inside 5..250 after clipping it there first)
    base = Image.fromarray(np.clip(np.asarray(image), 5, 250))
    signs = np.where(np.indices((64, 64, 3)).sum(axis=0) % 2 == 0, 5, -5)
    assert psnr(_shifted(base, signs), base) == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-9)  # 34.15 dB


def test_clip_random_weights_score_in_range_and_deterministic(clip_scorer: Any, metric_weights: dict[str, Path]
                                                               ) -> None:
    import torch

    from dgate.eval.metrics import load_clip

    images = _smooth_images(4, seed=4) + _noise_images(4, seed=5)
    prompts = ["a red fox in the snow", "a lighthouse", "a bowl of ramen", "a bicycle"] * 2
    scores = clip_scorer.scores(images, prompts, batch_size=3)  # batches that cut across the list
    assert len(scores) == 8 and all(0.0 <= score <= 100.0 for score in scores)
    assert clip_scorer.scores(images, prompts) == pytest.approx(scores, abs=1e-4)
    assert load_clip(metric_weights["clip"], CLIP_ARCH).scores(images, prompts) == pytest.approx(scores, abs=1e-4)
    # torchmetrics' CLIPScore definition, recomputed here from the raw embeddings
    with torch.no_grad():
        image_emb = clip_scorer.model.encode_image(torch.stack([clip_scorer.preprocess(image) for image in images]))
        text_emb = clip_scorer.model.encode_text(clip_scorer.tokenizer(prompts))
    cosine = torch.nn.functional.cosine_similarity(image_emb, text_emb, dim=-1)
    assert scores == pytest.approx((100 * cosine.clamp(min=0)).tolist(), abs=1e-3)


def test_fid_random_weights_zero_against_itself_positive_against_other(metric_weights: dict[str, Path]) -> None:
    from dgate.eval.metrics import load_fid

    scorer = load_fid(metric_weights["inception"])
    smooth, noise = _smooth_images(4, seed=6), _noise_images(4, seed=7)
    scorer.set_reference(smooth)
    other = scorer.fid(noise)
    assert other is not None and other > 1.0
    same = scorer.fid(smooth)
    assert same is not None and same < 1e-6 * other, (same, other)
    assert scorer.fid(noise[:1]) is None  # one image has no covariance


def test_frechet_distance_equals_torchmetrics_formula() -> None:
    import torch
    from torchmetrics.image.fid import _compute_fid

    from dgate.eval.metrics import frechet_distance

    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(10, 32, generator=generator, dtype=torch.float64) for _ in range(2))
    mu1, mu2 = a.mean(0), b.mean(0) + 0.3
    sigma1, sigma2 = torch.cov(a.T), torch.cov(b.T)  # rank 9 of 32: singular, as with few images
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(float(_compute_fid(mu1, sigma1, mu2, sigma2)),
                                                                       rel=1e-6)


# ------------------------------------------------------------------------------------------------ errors
def test_missing_or_unreadable_weights_file_names_the_flag(tmp_path: Path) -> None:
    from dgate.eval.metrics import load_clip, load_fid, load_lpips

    for load, flag in ((lambda p: load_clip(p, CLIP_ARCH), "--clip-weights"), (load_fid, "--inception-weights"),
                       (load_lpips, "--lpips-weights")):
        with pytest.raises(MetricWeightsError, match=f"{flag} .*no such file; expected"):
            load(tmp_path / "absent.pt")
        garbage = tmp_path / "garbage.pt"
        garbage.write_text("not a checkpoint")
        with pytest.raises(MetricWeightsError, match=f"{flag} .*not loadable as"):
            load(garbage)


def test_wrong_weights_for_a_metric_is_a_clear_error(metric_weights: dict[str, Path]) -> None:
    from dgate.eval.metrics import load_lpips

    with pytest.raises(MetricWeightsError, match="--lpips-weights .*AlexNet"):
        load_lpips(metric_weights["inception"])  # a real state dict, of the wrong network


def test_missing_flag_is_an_error_before_generation(tmp_path: Path) -> None:
    from dgate.eval.scoring import check_metric_flags

    config = EvalConfig(models=("a",), out=tmp_path, metrics=("psnr", "lpips"))
    with pytest.raises(MetricWeightsError, match="--lpips-weights is required for the lpips metric"):
        check_metric_flags(config)
    check_metric_flags(EvalConfig(models=("a",), out=tmp_path, metrics=("psnr",)))  # PSNR needs no weights


def test_config_parsing() -> None:
    assert parse_metrics("clip, psnr,clip") == ("clip", "psnr")
    assert parse_metrics("all") == ("clip", "fid", "lpips", "psnr")
    assert parse_labels(["m=int8 smoothquant"]) == {"m": "int8 smoothquant"}
    for bad in (lambda: parse_metrics("clip,ssim"), lambda: parse_labels(["m"]),
                lambda: EvalConfig(models=("a",), out=Path("x"), size="64"),
                lambda: EvalConfig(models=("a", "a"), out=Path("x"))):
        with pytest.raises(EvalConfigError):
            bad()
    shipped = EvalConfig(models=("a",), out=Path("x")).load_prompts()
    assert len(shipped) >= 300 and len(set(shipped)) == len(shipped)
    assert EvalConfig(models=("a",), out=Path("x"), num_prompts=5).load_prompts() == shipped[:5]


def _parse(argv: list[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="dgate")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["eval", *argv])


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_cli_user_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dgate.eval.cli import cmd_eval

    url = _closed_port_url()
    args = _parse(["--base-url", url, "--model", "m", "--out", str(tmp_path), "--no-wandb"])
    assert cmd_eval(args) == 2  # all metrics by default, no weights flag given: refused before the server
    message = capsys.readouterr().err
    assert message.startswith("dgate eval: --clip-weights is required") and message.count("\n") == 1
    args = _parse(["--base-url", url, "--model", "m", "--out", str(tmp_path), "--no-wandb", "--metrics", "psnr"])
    assert cmd_eval(args) == 2
    assert f"cannot reach the server at {url}" in capsys.readouterr().err
    assert not (tmp_path / "images").exists()


def test_cli_module_imports_no_torch() -> None:
    code = ("import sys, dgate.eval.cli; heavy = [m for m in ('torch', 'open_clip', 'wandb', 'openai', 'lpips') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------- report and W&B
def _fake_runs(tmp_path: Path, prompts: list[str]) -> list[ModelRun]:
    runs = []
    for position, (model, precision) in enumerate((("ref-model", "fp32"), ("a-much-longer-model-name", "int8"))):
        folder = tmp_path / "images" / model
        folder.mkdir(parents=True)
        images = []
        for index, (prompt, image) in enumerate(zip(prompts, _smooth_images(len(prompts), seed=position),
                                                    strict=True)):
            path = folder / f"{index:04d}.png"
            image.save(path)
            images.append(GeneratedImage(index=index, prompt=prompt, seed=index, path=path,
                                         latency_s=0.1 + 0.01 * index))
        runs.append(ModelRun(model=model, precision=precision, images=tuple(images), wall_s=1.0, concurrency=1))
    return runs


def _rows(runs: list[ModelRun]) -> tuple[ModelRow, ...]:
    return (
        ModelRow(model=runs[0].model, precision="fp32", images=2, clip_score=21.5, fid=None, lpips=None, psnr=None,
                 latency_ms_mean=105.0, latency_ms_p95=109.5, throughput_ips=2.0, reference=True),
        ModelRow(model=runs[1].model, precision="int8", images=2, clip_score=20.25, fid=12.5, lpips=0.125,
                 psnr=31.5, latency_ms_mean=55.0, latency_ms_p95=59.5, throughput_ips=4.0),
    )


def test_report_writes_json_markdown_and_decodable_pngs(tmp_path: Path) -> None:
    from dgate.eval.report import write_report
    from dgate.eval.scoring import ModelScores

    prompts = ["a red fox in a snowy forest, oil painting", "a lighthouse"]
    runs = _fake_runs(tmp_path, prompts)
    scores = [ModelScores(clip_score=21.5, per_image={"clip_score": [21.0, 22.0]}),
              ModelScores(clip_score=20.25, fid=12.5, lpips=0.125, psnr=31.5,
                          per_image={"clip_score": [20.0, 20.5], "lpips": [0.1, 0.15], "psnr": [30.0, 100.0]})]
    files = write_report(tmp_path, _rows(runs), runs, scores, {"server": "stub"}, ["Reference: `ref-model`."])
    document = json.loads(files.results_json.read_text())
    assert [row["model"] for row in document["rows"]] == ["ref-model", "a-much-longer-model-name"]
    assert document["rows"][1]["lpips"] == 0.125 and document["rows"][0]["reference"] is True
    assert document["images"]["a-much-longer-model-name"][1] == {
        "index": 1, "prompt": "a lighthouse", "seed": 1, "path": "images/a-much-longer-model-name/0001.png",
        "latency_ms": pytest.approx(110.0), "clip_score": 20.5, "lpips": 0.15, "psnr": 100.0}
    markdown = files.results_md.read_text()
    assert "| model | precision | images | CLIP score | FID | LPIPS vs ref |" in markdown
    assert "| ref-model | fp32 | 2 | 21.50 | ref | ref | ref | 105.0 | 109.5 | 2.000 |" in markdown
    assert "| a-much-longer-model-name | int8 | 2 | 20.25 | 12.50 | 0.1250 | 31.50 | 55.0 | 59.5 | 4.000 |" in markdown
    assert "Reference: `ref-model`." in markdown
    assert set(files.plots) == {"quality_vs_precision", "latency_vs_precision"}
    assert [path.name for path in files.grids] == ["prompt_0000.png", "prompt_0001.png"]
    for png in [*files.plots.values(), *files.grids]:
        with Image.open(png) as image:
            image.load()
            assert image.format == "PNG" and image.width > 100
    with Image.open(files.grids[0]) as grid:  # both 64 px tiles enlarged 3x, side by side
        assert grid.width >= 2 * 192


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B offline and silent, with every folder it writes inside tmp_path (nothing in $HOME)."""
    home = tmp_path / "wandb-home"
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_DIR", str(home)),
                        ("WANDB_CACHE_DIR", str(home / "cache")), ("WANDB_CONFIG_DIR", str(home / "config")),
                        ("WANDB_DATA_DIR", str(home / "data"))):
        monkeypatch.setenv(name, value)
    return home


def test_wandb_offline_run_is_written(tmp_path: Path, wandb_env: Path) -> None:
    from dgate.eval.report import TABLE_COLUMNS, table_rows
    from dgate.eval.tracking import log_to_wandb, summary_scalars

    runs = _fake_runs(tmp_path, ["a", "b"])
    rows = _rows(runs)
    assert summary_scalars(rows)["a-much-longer-model-name/lpips"] == 0.125
    assert "ref-model/lpips" not in summary_scalars(rows)  # not computed: not logged as a number
    grid = runs[0].images[0].path
    run_dir = log_to_wandb(rows, TABLE_COLUMNS, table_rows(rows), {"grid": grid}, [(grid, "a")], tmp_path / "out",
                           "dgate-eval-test", "offline", {"models": ["ref-model"]})
    assert run_dir is not None and run_dir.parent == tmp_path / "out" / "wandb"
    assert run_dir.name.startswith("offline-run-") and list(run_dir.glob("*.wandb"))
    assert log_to_wandb(rows, TABLE_COLUMNS, [], {}, [], tmp_path / "off", "p", "disabled", {}) is None


# ------------------------------------------------------------------------------- run_eval on a stub server
STUB_MODELS = {"stub-ref": {"precision": "fp32"}, "stub-noisy": {}}  # stub-noisy reports no precision


def _stub_png(model: str, seed: int, size: str) -> str:
    """A fixed image per seed; stub-noisy adds seed-fixed noise, so it differs from stub-ref by a known amount."""
    width, height = (int(value) for value in size.split("x"))
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.integers(40, 216, (height, width, 3)), 0, 255)
    if model == "stub-noisy":
        pixels = np.clip(pixels + np.random.default_rng(1000 + seed).integers(-20, 21, pixels.shape), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def stub_openai_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A STUB OpenAI Images server (not D-Gate): fixed PNGs per model and seed; yields (base_url, requests)."""
    import uvicorn

    requests: list[dict[str, Any]] = []
    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "stub", **extra}
                                           for name, extra in STUB_MODELS.items()]}

    @app.post("/v1/images/generations")
    async def generate(request: Request) -> JSONResponse:
        body = await request.json()
        requests.append(body)
        if body["model"] not in STUB_MODELS:
            return JSONResponse({"error": {"message": f"model {body['model']} not found", "type": "not_found"}},
                                status_code=404)
        image = _stub_png(body["model"], body["seed"], body.get("size", "64x64"))
        return JSONResponse({"created": 0, "data": [{"b64_json": image}]})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(f"{base_url}/models", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield base_url, requests
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_run_eval_against_stub_server_random_weights(tmp_path: Path, metric_weights: dict[str, Path], wandb_env: Path,
                                                     stub_openai_server: tuple[str, list[dict[str, Any]]]) -> None:
    from dgate.eval.run import run_eval

    base_url, requests = stub_openai_server
    out = tmp_path / "eval"
    config = EvalConfig(
        models=("stub-ref", "stub-noisy"), out=out, base_url=base_url, num_prompts=3, seed=7, size="64x64", steps=2,
        concurrency=2, clip_weights=metric_weights["clip"], clip_arch=CLIP_ARCH,
        inception_weights=metric_weights["inception"], lpips_weights=metric_weights["lpips"],
        labels={"stub-noisy": "int8"}, wandb_project="dgate-eval-test",
    )
    result = run_eval(config)

    prompts = config.load_prompts()
    for model in config.models:  # the same prompt and seed for every model; one warm-up (prompt 0) first
        sent = sorted((body["seed"], body["prompt"]) for body in requests if body["model"] == model)
        assert sent == sorted([(7, prompts[0])] + [(7 + index, prompt) for index, prompt in enumerate(prompts)])
    assert all(body["num_inference_steps"] == 2 and "guidance_scale" not in body and body["n"] == 1
               and body["response_format"] == "b64_json" for body in requests)

    ref, noisy = result.rows
    assert (ref.model, ref.precision, ref.reference, noisy.precision) == ("stub-ref", "fp32", True, "int8")
    assert ref.images == noisy.images == 3 and result.row("stub-noisy") is noisy
    assert ref.lpips is None and ref.psnr is None and ref.fid is None
    assert noisy.lpips is not None and noisy.lpips > 0 and noisy.fid is not None and noisy.fid > 0
    assert noisy.psnr is not None and 20 < noisy.psnr < 40  # +/-20 uniform noise: ~25.6 dB
    for row in result.rows:
        assert row.clip_score is not None and 0 <= row.clip_score <= 100
        assert row.latency_ms_p95 >= row.latency_ms_mean > 0 and row.throughput_ips > 0
    with Image.open(result.images_dir / "stub-noisy" / "0002.png") as image:
        assert image.size == (64, 64)
    assert json.loads(result.results_json.read_text())["rows"][1]["model"] == "stub-noisy"
    markdown = result.results_md.read_text()
    assert "**Random weights** for CLIP, FID, LPIPS" in markdown and "FID from 3 images" in markdown
    assert len(result.grids) == 3 and all(path.is_file() for path in result.plots.values())
    assert result.wandb_dir is not None and list(result.wandb_dir.glob("*.wandb"))


def test_run_eval_unknown_model_fails_before_generation(tmp_path: Path,
                                                        stub_openai_server: tuple[str, list[dict[str, Any]]]) -> None:
    from dgate.eval.run import run_eval

    base_url, requests = stub_openai_server
    config = EvalConfig(models=("stub-ref", "no-such-model"), out=tmp_path, base_url=base_url, num_prompts=2,
                        metrics=("psnr",), wandb=False)
    with pytest.raises(EvalServerError, match="no-such-model not served .*served: stub-noisy, stub-ref"):
        run_eval(config)
    assert requests == []
