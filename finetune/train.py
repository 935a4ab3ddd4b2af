"""The training loop: VAE-encode → add noise at a random timestep → predict it (or the velocity) → MSE,
with AdamW on the LoRA parameters only."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dgate.finetune import checkpoint as ckpt
from dgate.finetune.adapters import add_adapters, save_lora_file, trainable_parameters
from dgate.finetune.config import TrainConfig
from dgate.finetune.dataset import (
    Example,
    ImageCaptionDataset,
    StreamBatchSampler,
    collate,
    scan_folder,
)
from dgate.finetune.dreambooth import ensure_class_images, prior_preservation_loss
from dgate.finetune.pipeline import Conditioning, encode, load_pipeline, text_encoders, tokenize
from dgate.finetune.tracking import Tracker, make_tracker

logger = logging.getLogger(__name__)

# The class-image stream is shuffled independently of the instance stream.
CLASS_STREAM_SEED_OFFSET = 1_000_003


@dataclass
class TrainResult:
    output: Path
    steps: int  # the step the run ended at (max_steps)
    trained_steps: int  # steps this process ran (fewer when resumed)
    seconds: float  # training-loop time, without loading and class-image generation
    loss: float | None  # the last step's loss
    samples: list[Path] = field(default_factory=list)
    wandb_dir: Path | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda, but torch sees no CUDA device (a CPU build of torch, or no GPU)")
    return torch.device(name)


def weight_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the frozen weights; the LoRA parameters themselves always train in FP32."""
    if mixed_precision == "fp16" and device.type != "cuda":
        raise RuntimeError("mixed_precision: fp16 needs device cuda (use bf16 or no on the CPU)")
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every CUDA device


def _loader(examples: list[Example], config: TrainConfig, seed: int, start: int, stop: int) -> Iterator[Any]:
    dataset = ImageCaptionDataset(examples, config.resolution, config.center_crop)
    sampler = StreamBatchSampler(len(dataset), config.batch_size, seed, start=start, stop=stop)
    # A DataLoader iterator draws its workers' base seed from the global RNG unless given a generator of
    # its own; that draw would shift the LoRA-dropout masks of a resumed run against an uninterrupted one.
    return iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                            num_workers=config.dataloader_workers,
                                            generator=torch.Generator().manual_seed(seed)))


def _make_optimizer(config: TrainConfig, parameters: dict[str, torch.nn.Parameter]) -> torch.optim.Optimizer:
    unet = [p for name, p in parameters.items() if name.startswith("unet.")]
    text = [p for name, p in parameters.items() if not name.startswith("unet.")]
    groups: list[dict[str, Any]] = [{"params": unet, "lr": config.learning_rate}]
    if text:
        groups.append({"params": text, "lr": config.text_encoder_learning_rate or config.learning_rate})
    return torch.optim.AdamW(groups, betas=(config.adam_beta1, config.adam_beta2),
                             weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)


class Trainer:
    """One run of `config`: models, data streams and optimizer, stepped by `run()`."""

    def __init__(self, config: TrainConfig, resume: str | None = None) -> None:
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import cast_training_params

        self.config = config
        self.run_dir = config.run_dir
        # A bad --resume path fails now, not after minutes of loading a real checkpoint.
        checkpoint = ckpt.resolve(resume, self.run_dir) if resume else None
        if resume and checkpoint is None:
            logger.info("no checkpoint in %s yet: starting from step 0", self.run_dir)
        seed_everything(config.seed)
        self.device = resolve_device(config.device)
        self.dtype = weight_dtype(config.mixed_precision, self.device)
        db = config.dreambooth
        self.instance_examples = scan_folder(config.dataset, require_captions=db is None)
        if db is not None:
            self.instance_examples = [Example(e.image, db.instance_prompt) for e in self.instance_examples]
        self.pipe, self.family = load_pipeline(config.pretrained_model)
        self.pipe.to(self.device)
        if self.dtype != torch.float32:  # frozen weights in half precision; the LoRA ones are cast back below
            for name, component in self.pipe.components.items():
                # SDXL's VAE overflows in FP16 (its config says force_upcast): it stays FP32.
                upcast = name == "vae" and self.dtype == torch.float16 and component.config.force_upcast
                if isinstance(component, torch.nn.Module) and not upcast:
                    component.to(self.dtype)
        self.class_examples: list[Example] = []
        if db is not None and db.with_prior_preservation:
            # The base pipeline's own images of the class: generated before the adapter exists.
            with self._autocast():
                self.class_examples = ensure_class_images(self.pipe, db, config.resolution, config.seed)
        self.modules = add_adapters(self.pipe, self.family, config)
        cast_training_params(list(self.modules.values()), dtype=torch.float32)
        if config.gradient_checkpointing:
            self.pipe.unet.enable_gradient_checkpointing()
            if config.train_text_encoder:
                for encoder in text_encoders(self.pipe, self.family):
                    encoder.gradient_checkpointing_enable()  # type: ignore[operator]

        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        if config.prediction_type:  # the samples' scheduler must predict what the UNet is taught to
            self.noise_scheduler.register_to_config(prediction_type=config.prediction_type)
            self.pipe.scheduler.register_to_config(prediction_type=config.prediction_type)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

        self.parameters = trainable_parameters(self.modules)
        optimizer = _make_optimizer(config, self.parameters)
        lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer,
                                     num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_steps)
        scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.state = ckpt.TrainingState(self.parameters, optimizer, lr_scheduler,
                                        torch.Generator().manual_seed(config.seed), scaler)
        self.step = 0
        if checkpoint is not None:
            self.step = ckpt.load_checkpoint(checkpoint, self.state)
            logger.info("resumed from %s (step %d)", checkpoint, self.step)
        self.tracker: Tracker = Tracker()

    # -- one step -------------------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _conditioning(self, batch: dict[str, Any]) -> Conditioning:
        ids = tokenize(self.pipe, self.family, batch["captions"])
        grad = torch.enable_grad() if self.config.train_text_encoder else torch.no_grad()
        with grad:
            return encode(self.pipe, self.family, ids, self.device, batch["original_sizes"], batch["crop_top_lefts"],
                          self.config.resolution)

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        generator, vae = self.state.generator, self.pipe.vae
        pixels: torch.Tensor = batch["pixels"]
        if self.config.random_flip:
            flip = torch.rand(pixels.shape[0], generator=generator) < 0.5
            pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
        with torch.no_grad():
            distribution = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
            latents = distribution.sample(generator=generator)
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            latents = ((latents - shift) * vae.config.scaling_factor).to(self.dtype)
        noise = torch.randn(latents.shape, generator=generator).to(self.device, latents.dtype)
        if self.config.noise_offset:
            offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
            noise = noise + self.config.noise_offset * offset.to(self.device, latents.dtype)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator).to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = noise if self.prediction_type == "epsilon" else self.noise_scheduler.get_velocity(latents, noise,
                                                                                                  timesteps)
        with self._autocast():
            cond = self._conditioning(batch)
            prediction = self.pipe.unet(noisy, timesteps, cond.hidden_states, added_cond_kwargs=cond.added).sample
        db = self.config.dreambooth
        if db is not None and db.with_prior_preservation:
            loss, instance, prior = prior_preservation_loss(prediction, target, db.prior_loss_weight)
            return loss, {"loss_instance": instance.item(), "loss_prior": prior.item()}
        return F.mse_loss(prediction.float(), target.float()), {}

    def _batches(self) -> Iterator[dict[str, Any]]:
        accumulation = self.config.gradient_accumulation_steps
        start, stop = self.step * accumulation, self.config.max_steps * accumulation
        instance = _loader(self.instance_examples, self.config, self.config.seed, start, stop)
        if not self.class_examples:
            yield from instance
            return
        classes = _loader(self.class_examples, self.config, self.config.seed + CLASS_STREAM_SEED_OFFSET, start, stop)
        for first, second in zip(instance, classes, strict=True):
            # Instance examples first, then as many class examples: prior_preservation_loss splits there.
            yield {key: (torch.cat([first[key], second[key]]) if key == "pixels" else first[key] + second[key])
                   for key in first}

    # -- samples, checkpoints, the run ----------------------------------------------------------------------

    def sample(self, name: str) -> Path | None:
        """The validation prompt through the pipeline as it is now (adapter applied), seeded by the config's
        seed; written to <output_dir>/samples/<name>.png. It draws from no generator the training uses."""
        config = self.config
        if not config.validation_prompt:
            return None
        for module in self.modules.values():
            module.eval()
        forked = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked), self._autocast():
            image = self.pipe(prompt=config.validation_prompt, height=config.resolution, width=config.resolution,
                              num_inference_steps=config.validation_inference_steps,
                              guidance_scale=config.validation_guidance_scale,
                              generator=torch.Generator().manual_seed(config.seed)).images[0]
        self._train_mode()
        path = self.run_dir / "samples" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        self.tracker.log_image("sample", image, config.validation_prompt, self.step)
        return path

    def _train_mode(self) -> None:
        for module in self.modules.values():
            module.train()

    def save_checkpoint(self) -> Path:
        return ckpt.save_checkpoint(self.run_dir, self.step, self.state, self.config.to_dict(),
                                    lambda path: save_lora_file(self.pipe, self.modules, path),
                                    self.config.checkpoints_total_limit)

    def run(self) -> TrainResult:
        config, state = self.config, self.state
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1), "utf-8")
        self.tracker = make_tracker(config.wandb, config.wandb_project, config.wandb_run_name, config.wandb_mode,
                                    self.run_dir, config.to_dict(), self.step)
        first_step, loss_value, samples = self.step, None, []
        accumulation = config.gradient_accumulation_steps
        self._train_mode()
        started = time.perf_counter()
        progress = tqdm(total=config.max_steps, initial=self.step, desc="finetune", unit="step")
        try:
            batches = self._batches()
            while self.step < config.max_steps:
                totals: dict[str, float] = {}
                for _ in range(accumulation):
                    loss, parts = self._loss(next(batches))
                    scaled = loss / accumulation
                    (state.scaler.scale(scaled) if state.scaler else scaled).backward()
                    for key, value in {"loss": loss.item(), **parts}.items():
                        totals[key] = totals.get(key, 0.0) + value / accumulation
                if state.scaler:
                    state.scaler.unscale_(state.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(list(state.parameters.values()), config.max_grad_norm)
                if state.scaler:
                    state.scaler.step(state.optimizer)
                    state.scaler.update()
                else:
                    state.optimizer.step()
                state.lr_scheduler.step()
                state.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                loss_value = totals["loss"]
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"loss is {loss_value} at step {self.step}: lower learning_rate, "
                                             "or use bf16 instead of fp16")
                progress.update(1)
                progress.set_postfix(loss=f"{loss_value:.4f}")
                if self.step % config.log_every == 0 or self.step == config.max_steps:
                    self.tracker.log({**totals, "lr": state.lr_scheduler.get_last_lr()[0],
                                      "grad_norm": float(grad_norm)}, self.step)
                if self.step % config.checkpoint_every == 0:
                    self.save_checkpoint()
                if config.validation_every and self.step % config.validation_every == 0:
                    samples.append(self.sample(f"step-{self.step:06d}"))
            seconds = time.perf_counter() - started
            trained = self.step - first_step
            progress.close()  # before logging, so the line is not drawn over the bar
            logger.info("trained %d steps in %.1f s (%.3f s/step)", trained, seconds, seconds / max(trained, 1))
            output = save_lora_file(self.pipe, self.modules, config.output)
            logger.info("wrote %s", output)
            samples.append(self.sample("final"))
        finally:
            progress.close()
            self.tracker.finish()
        return TrainResult(output, self.step, trained, seconds, loss_value, [s for s in samples if s],
                           self.tracker.run_dir)


def train(config: TrainConfig, resume: str | None = None) -> TrainResult:
    """Train `config` (continuing from checkpoint `resume`, "latest" or a folder) and write its adapter."""
    return Trainer(config, resume).run()
