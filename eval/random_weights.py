"""Randomly initialised weight files in exactly the formats `dgate eval`'s metric loaders take.

For tests and demos only: with random networks the CLIP score, FID and LPIPS are computed correctly
but MEAN NOTHING about image quality. Real scores need the real files (see eval/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path

# Written beside the files; the report reads it to flag scores made with random weights.
MANIFEST = "RANDOM_WEIGHTS.json"


def write_random_metric_weights(directory: Path | str, clip_arch: str = "ViT-B-32", seed: int = 0) -> dict[str, Path]:
    """Write random CLIP, Inception and AlexNet weights into `directory`; the scores they give are meaningless.

    Returns {"clip": ..., "inception": ..., "lpips": ...}, the files for `--clip-weights` (an open_clip
    `clip_arch` state dict; "ViT-S-32" is ~250 MB, "ViT-B-32" ~600 MB), `--inception-weights`
    (torch-fidelity's InceptionV3 state dict, ~96 MB) and `--lpips-weights` (torchvision AlexNet's
    `features.*` weights, ~10 MB). Deterministic for a given `seed`; the global RNG is left untouched.
    """
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "clip": directory / f"random-open_clip-{clip_arch}.pt",
        "inception": directory / "random-inception-v3-fidelity.pth",
        "lpips": directory / "random-alexnet-features.pth",
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.save(_random_clip_state_dict(clip_arch), paths["clip"])
        torch.save(_random_inception_state_dict(), paths["inception"])
        torch.save(_random_alexnet_state_dict(), paths["lpips"])
    (directory / MANIFEST).write_text(json.dumps(
        {"note": "random weights from dgate.eval.random_weights: scores made with them are meaningless",
         "clip_arch": clip_arch, "seed": seed, "files": {key: path.name for key, path in paths.items()}}, indent=2))
    return paths


def is_random_weights(path: Path | str | None) -> bool:
    """True for a file that `write_random_metric_weights` wrote (listed in the manifest beside it)."""
    if path is None:
        return False
    path = Path(path)
    try:
        manifest = json.loads((path.parent / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return path.name in manifest.get("files", {}).values()


def _relu_preserving_init(module: object) -> None:
    # PyTorch's default conv init shrinks activations ~6x per conv+ReLU: 90+ layers of InceptionV3 would
    # end in features ~1e-13 and every FID ~0. He-normal init keeps them O(1), so FID can tell sets apart.
    import torch

    assert isinstance(module, torch.nn.Module)
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                torch.nn.init.zeros_(layer.bias)


def _random_clip_state_dict(arch: str) -> dict[str, object]:
    import warnings

    import open_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model(arch, pretrained=None)
    return dict(model.state_dict())


def _random_inception_state_dict() -> dict[str, object]:
    import tempfile

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        # Its __init__ always loads weights (from a URL when given no path): skip that, keep the fresh init.
        def load_state_dict(self, *args: object, **kwargs: object) -> None:
            return None

    with tempfile.NamedTemporaryFile(suffix=".pth") as empty:
        torch.save({}, empty.name)
        model = _Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty.name)
    _relu_preserving_init(model)
    return dict(model.state_dict())


def _random_alexnet_state_dict() -> dict[str, object]:
    import torch

    # torchvision's alexnet().features layout (conv indices 0, 3, 6, 8, 10), built without torchvision.
    features = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), torch.nn.ReLU(inplace=True),
        torch.nn.MaxPool2d(kernel_size=3, stride=2),
        torch.nn.Conv2d(64, 192, kernel_size=5, padding=2), torch.nn.ReLU(inplace=True),
        torch.nn.MaxPool2d(kernel_size=3, stride=2),
        torch.nn.Conv2d(192, 384, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(384, 256, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(256, 256, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True),
    )
    _relu_preserving_init(features)
    return {f"features.{key}": value for key, value in features.state_dict().items()}
