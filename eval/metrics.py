"""The quality metrics, each from a local weights file only (nothing is downloaded).

- CLIP score (open_clip_torch): 100 * max(cos(image, prompt), 0), torchmetrics' CLIPScore definition.
- FID (torchmetrics + torch-fidelity's InceptionV3, 2048-d pool features) against a reference set.
- LPIPS (lpips, AlexNet backbone + the linear layers that ship in the lpips wheel).
- PSNR (numpy, 8-bit RGB).

Every loader checks its file and raises `MetricWeightsError` naming the flag and the file it expects.
The heavy libraries are imported inside the loaders, so importing this module costs only torch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dgate.eval.errors import MetricWeightsError

__all__ = [
    "ClipScorer", "FidScorer", "LpipsScorer", "MetricWeightsError", "WEIGHT_FLAGS", "check_weights_file",
    "expected_weights", "frechet_distance", "load_clip", "load_fid", "load_lpips", "psnr", "resolve_device",
]

# metric -> the flag that names its weights file
WEIGHT_FLAGS: Mapping[str, str] = {"clip": "--clip-weights", "fid": "--inception-weights", "lpips": "--lpips-weights"}


def expected_weights(metric: str, clip_arch: str = "ViT-B-32") -> str:
    """What file a metric's flag must name (quoted in every error message)."""
    return {
        "clip": f"an open_clip {clip_arch} checkpoint file (.bin/.pt/.pth/.safetensors, e.g. the laion2b "
                f"open_clip_pytorch_model.bin of {clip_arch})",
        "fid": "torch-fidelity's InceptionV3 state dict (weights-inception-2015-12-05-6726825d.pth)",
        "lpips": "torchvision's AlexNet state dict (alexnet-owt-7be5be79.pth, or just its features.* weights)",
    }[metric]


def check_weights_file(path: Path | str | None, metric: str, clip_arch: str = "ViT-B-32") -> Path:
    """The flag's file, or a `MetricWeightsError` when the flag is absent or the file is not readable."""
    flag, expects = WEIGHT_FLAGS[metric], expected_weights(metric, clip_arch)
    if path is None:
        raise MetricWeightsError(f"{flag} is required for the {metric} metric: {expects}; nothing is downloaded "
                                 f"(leave {metric} out of --metrics to skip it)")
    path = Path(path)
    if not path.is_file():
        raise MetricWeightsError(f"{flag} {path}: no such file; expected {expects}")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as error:
        raise MetricWeightsError(f"{flag} {path}: cannot read it ({error.strerror}); expected {expects}") from None
    return path


def _unreadable(metric: str, path: Path, error: BaseException, clip_arch: str = "ViT-B-32") -> MetricWeightsError:
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return MetricWeightsError(f"{WEIGHT_FLAGS[metric]} {path}: not loadable as {expected_weights(metric, clip_arch)}: "
                              f"{detail[:300]}")


def _load_state_dict(path: Path, metric: str) -> dict[str, torch.Tensor]:
    # weights_only: a weights file is data; a pickle that needs code to load is refused, not run.
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (any failure to read is the same message to the user)
        raise _unreadable(metric, path, error) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise _unreadable(metric, path, ValueError("the file holds no state dict of tensors"))
    return state


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip logs every loading step at INFO on the root logger; keep a run's log to its own lines."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _to_float_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """Same-size images -> N x 3 x H x W floats in [0, 1]."""
    array = np.stack([np.asarray(_rgb(image), dtype=np.float32) for image in images]) / 255.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def _batches(images: Sequence[Image.Image], batch_size: int) -> Iterator[list[Image.Image]]:
    """Consecutive runs of same-size images, at most `batch_size` long (a batch tensor needs one size)."""
    batch: list[Image.Image] = []
    for image in images:
        if batch and (len(batch) == batch_size or batch[0].size != image.size):
            yield batch
            batch = []
        batch.append(image)
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------- CLIP
@dataclass
class ClipScorer:
    model: torch.nn.Module
    preprocess: Any  # open_clip's eval transform: PIL image -> 3 x S x S tensor
    tokenizer: Any
    device: torch.device
    arch: str

    @torch.no_grad()
    def scores(self, images: Sequence[Image.Image], prompts: Sequence[str], batch_size: int = 32) -> list[float]:
        """Per image: 100 * max(cosine(image embedding, its prompt's embedding), 0), in [0, 100]."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        model: Any = self.model
        result: list[float] = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([self.preprocess(_rgb(image)) for image in images[start:start + batch_size]])
            tokens = self.tokenizer(list(prompts[start:start + batch_size]))
            image_emb = torch.nn.functional.normalize(model.encode_image(pixels.to(self.device)).float(), dim=-1)
            text_emb = torch.nn.functional.normalize(model.encode_text(tokens.to(self.device)).float(), dim=-1)
            cosine = (image_emb * text_emb).sum(dim=-1)
            result.extend((100.0 * cosine.clamp(min=0)).cpu().tolist())
        return result


def load_clip(path: Path | str | None, arch: str = "ViT-B-32", device: str = "cpu") -> ClipScorer:
    """open_clip `arch` with the weights in `path` (--clip-weights); the tokenizer ships in the wheel."""
    path = check_weights_file(path, "clip", arch)
    import open_clip

    if arch not in open_clip.list_models():
        raise MetricWeightsError(f"--clip-arch {arch}: not an open_clip architecture (see open_clip.list_models())")
    target = resolve_device(device)
    try:
        with _quiet_root_logger():
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(path), device=target)
    except Exception as error:  # noqa: BLE001 (a wrong arch/file mismatch surfaces as several error types)
        raise _unreadable("clip", path, error, arch) from None
    with _quiet_root_logger():
        tokenizer = open_clip.get_tokenizer(arch)  # the BPE vocabulary ships in the open_clip wheel
    model.eval()
    return ClipScorer(model=model, preprocess=preprocess, tokenizer=tokenizer, device=target, arch=arch)


# ----------------------------------------------------------------------------------------------- FID
def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a covariance matrix (negative rounding eigenvalues clamped to 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor,
                     sqrt_sigma1: torch.Tensor | None = None) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), torchmetrics' FID formula.

    tr sqrt(S1 S2) is taken as tr sqrt(S1^1/2 S2 S1^1/2) (same eigenvalues, S1 and S2 being PSD): two
    symmetric eigendecompositions (~1.3 s at 2048-d on 2 CPU cores) instead of torchmetrics' general
    `eigvals(S1 @ S2)` (~13 s), and S1^1/2 of the reference set is computed once for every model.
    """
    root = psd_sqrt(sigma1) if sqrt_sigma1 is None else sqrt_sigma1
    product = root @ sigma2 @ root
    trace_sqrt = torch.linalg.eigvalsh((product + product.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(float(value), 0.0)  # tiny negative values are rounding


def _mean_cov(feature_sum: torch.Tensor, cov_sum: torch.Tensor,
              count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # As torchmetrics' FrechetInceptionDistance.compute(): unbiased covariance from the running sums.
    mean = feature_sum.double() / count
    return mean, (cov_sum.double() - count * torch.outer(mean, mean)) / (count - 1)


class FidScorer:
    """FID of image sets against one reference set, whose features are computed once.

    torchmetrics' `FrechetInceptionDistance` extracts the features (torch-fidelity's InceptionV3 from the
    local file) and accumulates their sums; the distance itself is `frechet_distance` on those sums.
    """

    def __init__(self, metric: Any, device: torch.device, batch_size: int = 16) -> None:
        self._metric = metric
        self._device = device
        self._batch_size = batch_size
        self._reference: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # mean, cov, sqrt(cov)
        self.reference_count = 0

    def _features(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance of the images' 2048-d features."""
        self._metric.reset()
        for batch in _batches(images, self._batch_size):
            # normalize=True turns [0, 1] floats back into bytes by truncation (`(x * 255).byte()`): each value
            # sits in the middle of its byte's bin, so that gives back exactly the PNG's bytes.
            pixels = np.stack([np.asarray(_rgb(image), dtype=np.float32) for image in batch])
            floats = torch.from_numpy((pixels + 0.5) / 255.0).permute(0, 3, 1, 2).contiguous()
            self._metric.update(floats.to(self._device), real=False)
        metric = self._metric
        return _mean_cov(metric.fake_features_sum, metric.fake_features_cov_sum, metric.fake_features_num_samples)

    @torch.no_grad()
    def set_reference(self, images: Sequence[Image.Image]) -> None:
        self.reference_count = len(images)
        if len(images) < 2:
            self._reference = None
            return
        mean, cov = self._features(images)
        self._reference = (mean, cov, psd_sqrt(cov))

    @torch.no_grad()
    def fid(self, images: Sequence[Image.Image]) -> float | None:
        """FID against the reference set; None when either set has fewer than 2 images (no covariance)."""
        if self._reference is None or len(images) < 2:
            return None
        mean, cov = self._features(images)
        ref_mean, ref_cov, ref_sqrt = self._reference
        return frechet_distance(ref_mean, ref_cov, mean, cov, sqrt_sigma1=ref_sqrt)


def load_fid(path: Path | str | None, device: str = "cpu") -> FidScorer:
    """torchmetrics' FID, 2048-d features of torch-fidelity's InceptionV3 loaded from `path`."""
    path = check_weights_file(path, "fid")
    _load_state_dict(path, "fid")  # checked as plain tensors first: torch-fidelity unpickles it unrestricted
    from torchmetrics.image.fid import FrechetInceptionDistance

    target = resolve_device(device)
    try:
        metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path), normalize=True)
    except Exception as error:  # noqa: BLE001
        raise _unreadable("fid", path, error) from None
    return FidScorer(metric.to(target), target)


# --------------------------------------------------------------------------------------------- LPIPS
# lpips' AlexNet keeps torchvision's `features` indices inside five slices (lpips/pretrained_networks.py):
# slice1 = features[0:2], slice2 = [2:5], slice3 = [5:8], slice4 = [8:10], slice5 = [10:12].
_ALEXNET_SLICE_ENDS = (2, 5, 8, 10, 12)


def _alexnet_slice(index: int) -> int:
    return next(slice_number for slice_number, end in enumerate(_ALEXNET_SLICE_ENDS, start=1) if index < end)


def lpips_backbone_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision AlexNet keys (`features.N.*`, or `N.*` of `.features`) -> lpips' `sliceK.N.*`.

    Keys already in lpips' layout (`sliceK.N.*`, `net.sliceK.N.*`) pass through; the classifier is dropped.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("net.")
        if key.startswith("slice"):
            mapped[key] = value
            continue
        key = key.removeprefix("features.")
        index, _, rest = key.partition(".")
        if index.isdigit() and rest:
            mapped[f"slice{_alexnet_slice(int(index))}.{index}.{rest}"] = value
    return mapped


@dataclass
class LpipsScorer:
    model: torch.nn.Module
    device: torch.device

    @torch.no_grad()
    def distances(self, images: Sequence[Image.Image], references: Sequence[Image.Image]) -> list[float]:
        """LPIPS of each image to its reference (same index); a different size is resized to the reference's."""
        if len(images) != len(references):
            raise ValueError(f"{len(images)} images but {len(references)} references")
        result = []
        for image, reference in zip(images, references, strict=True):
            a = _to_float_tensor([match_size(image, reference)]).to(self.device)
            b = _to_float_tensor([reference]).to(self.device)
            result.append(float(self.model(a, b, normalize=True).reshape(())))  # normalize: [0,1] -> [-1,1]
        return result


def load_lpips(path: Path | str | None, device: str = "cpu") -> LpipsScorer:
    """lpips v0.1 AlexNet: linear layers from the wheel, the backbone from `path` (--lpips-weights)."""
    path = check_weights_file(path, "lpips")
    state = lpips_backbone_state_dict(_load_state_dict(path, "lpips"))
    import lpips

    with warnings.catch_warnings():  # torchvision's deprecation notice about `pretrained=`
        warnings.simplefilter("ignore")
        # pnet_rand: torchvision would otherwise download AlexNet; the backbone comes from `path` below.
        model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise _unreadable("lpips", path, error) from None
    target = resolve_device(device)
    return LpipsScorer(model=model.eval().to(target), device=target)


# ---------------------------------------------------------------------------------------------- PSNR
def match_size(image: Image.Image, reference: Image.Image) -> Image.Image:
    """`image` at the reference's size (bicubic) when the two models rendered different sizes."""
    return image if image.size == reference.size else _rgb(image).resize(reference.size, Image.Resampling.BICUBIC)


def psnr(image: Image.Image, reference: Image.Image) -> float:
    """PSNR in dB of 8-bit RGB images (peak 255); `inf` for identical images."""
    a = np.asarray(_rgb(match_size(image, reference)), dtype=np.float64)
    b = np.asarray(_rgb(reference), dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)
