"""The training loop: seeded, checkpointed every epoch, resumable, cancellable, generic over
architectures. What is specific to one (extra heads, stages, parameters per stage, the loss,
stage transitions) is its objective, see :mod:`hashview.training.objectives`.

Reproducibility: the model is initialised under ``torch.manual_seed(seed)``; every later random
choice (batch plan, augmentation, random triplets, stage re-initialisations) comes from a
CPU ``torch.Generator`` seeded from ``(seed, epoch, purpose)``. A resumed run rebuilds those
generators (or restores their saved state mid-epoch), so it ends with the same weights as an
uninterrupted run (tested to 1e-6 on CPU). The library never changes ``torch.set_num_threads``.

CUDA: fp16 autocast + GradScaler, channels_last, pinned uint8 batches copied ``non_blocking``
and augmented/normalised on the GPU; losses are computed in fp32. Batches are normalised by
:class:`hashview.model_input.ModelInput`, as the Encoder does, with the mean and std the saved
card records.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from hashview.encode import pick_device
from hashview.errors import ModelError
from hashview.model_input import ModelInput
from hashview.models import ModelCard, build_model, save_model
from hashview.training.init import init_weights
from hashview.models.cards import DEFAULT_MEAN, DEFAULT_STD
from hashview.progress import Cancelled, ProgressCallback, report
from hashview.training import checkpoint as ckpt
from hashview.training.config import TrainConfig
from hashview.training.data import (AugmentConfig, BalancedBatchSampler, PatchesInMemory,
                                    ShuffleBatchSampler, augment, epoch_generator,
                                    make_loader)
from hashview.training.objectives import objective_class

# Generator streams (purposes) derived from (seed, epoch).
_SAMPLER, _AUGMENT, _TRIPLETS, _REINIT = 0, 1, 2, 3


@dataclass
class TrainResult:
    model_path: Path          # out_dir / NAME.safetensors (+ NAME.json)
    card: ModelCard
    history: list[float]      # mean training loss per epoch
    seconds: float            # wall time of all sessions of this run (resumes included)
    log: list[dict] = field(default_factory=list)  # per epoch: loss, stage, lr, val_map, seconds
    net: Optional[nn.Module] = None  # the trained net (CPU, eval), equal to the saved file
    report: dict = field(default_factory=dict)  # the held-out report (train_from_folder)


class _Run:
    """Mutable training state; everything a checkpoint must capture lives here."""

    def __init__(self, cfg: TrainConfig, data: PatchesInMemory, device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        self.is_cuda = device.type == "cuda"
        n_classes = data.n_classes
        objective_cls = objective_class(cfg.arch)
        torch.manual_seed(cfg.seed)
        self.net = build_model(cfg.arch, cfg.bits, input_size=cfg.input_size,
                               **objective_cls.build_kwargs(cfg, n_classes))
        self.init_summary = (init_weights(self.net, cfg.arch, cfg.bits, cfg.init_from)
                             if cfg.init_from else None)
        self.objective = objective_cls(cfg, self.net, n_classes)
        # fine-tuning a small folder may keep the start's early layers as they are; in eval
        # mode during training too, so their BatchNorm statistics stay the start's
        self.frozen = list(self.net.children())[:cfg.freeze_children]
        for module in self.frozen:
            module.requires_grad_(False)
        self.stages = self.objective.stages()
        self.net.to(device, memory_format=torch.channels_last)
        for module in self.objective.extra.values():
            module.to(device)
        self.use_amp = self.is_cuda and cfg.amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.steps_per_epoch = len(self._sampler(0))
        self.epoch, self.batch = 0, 0          # next batch to run
        self.stage = self.stage_of(0)
        self.loss_sum, self.loss_count = 0.0, 0
        self.history: list[float] = []
        self.log: list[dict] = []
        self.seconds = 0.0
        self.gen_augment = self.gen_triplets = None
        self._saved_gens: dict[str, torch.Tensor] = {}  # mid-epoch generator states (resume)
        if cfg.method != "head":  # a head fit has its own small optimiser (training.head_fit)
            self._build_optimizer(self.stage)
        # EMA of the net's parameters and buffers (our addition; cfg.ema_decay > 0). It restarts
        # at every stage boundary (DCH: the LBE and softmax only train in stage 2).
        self.ema: Optional[dict[str, torch.Tensor]] = None
        if cfg.ema_decay > 0:
            self.reset_ema()
        # the epoch kept by validation (cfg.keep_best_epoch): its score, number and weights
        self.best_map, self.best_epoch = -1.0, -1
        self.best_state: Optional[dict[str, torch.Tensor]] = None
        # the saved card records this mean and std, so the model is used as it was trained
        self.model_input = ModelInput(cfg.input_size, DEFAULT_MEAN, DEFAULT_STD, device)
        self.augment_config = AugmentConfig.from_options(cfg.augment_options)

    # -- structure
    def stage_of(self, epoch: int) -> str:
        ends = itertools.accumulate(epochs for _, epochs in self.stages)
        for (name, _), end in zip(self.stages, ends):
            if epoch < end:
                return name
        return self.stages[-1][0]

    def _stage_epochs(self, stage: str) -> int:
        return dict(self.stages)[stage]

    def _sampler(self, epoch: int):
        cls = ShuffleBatchSampler if self.cfg.sampler == "shuffle" else BalancedBatchSampler
        return cls(self.data.labels, self.cfg.batch_size,
                   epoch_generator(self.cfg.seed, epoch, _SAMPLER), self.cfg.steps_per_epoch)

    def _build_optimizer(self, stage: str) -> None:
        cfg = self.cfg
        params = [p for p in self.objective.parameters(stage) if p.requires_grad]
        if cfg.optimizer == "adadelta":
            self.optimizer = torch.optim.Adadelta(params, lr=cfg.lr, rho=0.95, eps=1e-7,
                                                  weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = max(1, self.steps_per_epoch * self._stage_epochs(stage))
        if cfg.schedule == "cosine":
            def factor(step: int) -> float:  # cosine decay to 0 over the stage's steps
                return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        else:
            def factor(step: int) -> float:
                return 1.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.stage = stage

    def reset_ema(self) -> None:
        self.ema = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                    for k, v in self.net.state_dict().items()}
        self.ema_steps = 0

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema is None:
            return
        self.ema_steps += 1
        # warm-up (as in TF's ExponentialMovingAverage num_updates): early steps follow closely
        decay = min(self.cfg.ema_decay, (1 + self.ema_steps) / (10 + self.ema_steps))
        for k, v in self.net.state_dict().items():
            if v.is_floating_point():
                self.ema[k].mul_(decay).add_(v.detach().float(), alpha=1 - decay)
            else:
                self.ema[k].copy_(v)

    def enter_stage(self, stage: str, epoch: int) -> None:
        """Cross a stage boundary at ``epoch``: the objective's transition (seeded), a fresh
        optimiser and schedule, and a restarted EMA."""
        self.objective.enter_stage(stage, epoch_generator(self.cfg.seed, epoch, _REINIT))
        self._build_optimizer(stage)
        if self.ema is not None:
            self.reset_ema()

    # -- one step
    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self.objective.loss(self.stage, x, y, self.gen_triplets)

    def prepare(self, pixels: torch.Tensor, do_augment: bool) -> torch.Tensor:
        """uint8 ``(B, S, S, 3)`` (pinned on CUDA) -> the net's input on the device."""
        x = self.model_input.to_device(pixels)
        if do_augment:  # augment works in [0, 1], the normalisation in pixel units
            x = augment(x / 255.0, self.gen_augment, self.augment_config) * 255.0
        return self.model_input.normalise(x)

    def step(self, pixels: torch.Tensor, labels: torch.Tensor) -> float:
        self.net.train()
        for module in self.frozen:
            module.eval()
        x = self.prepare(pixels, self.cfg.augment)
        y = labels.to(self.device, non_blocking=True)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.use_amp \
            else contextlib.nullcontext()
        with autocast:
            loss, _ = self._loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.update_ema()
        return float(loss.detach())

    @torch.no_grad()
    def batch_loss(self, pixels: torch.Tensor, labels: torch.Tensor) -> float:
        """The training loss on a batch without augmentation or update (for diagnostics/tests):
        train-mode BatchNorm as in a step, running statistics and RNG left untouched."""
        modules = self.objective.modules()
        saved = [{k: v.clone() for k, v in m.named_buffers()} for m in modules]
        gen, self.gen_triplets = self.gen_triplets, epoch_generator(self.cfg.seed, 0, _TRIPLETS)
        try:
            for m in modules:
                m.train()
            return float(self._loss(self.prepare(pixels, False), labels.to(self.device))[0])
        finally:
            self.gen_triplets = gen
            for m, buffers in zip(modules, saved):
                for k, v in m.named_buffers():
                    v.copy_(buffers[k])

    @torch.no_grad()
    def encode(self, images: np.ndarray, batch: int = 128) -> np.ndarray:
        """Relaxed codes ``(N, bits)`` of uint8 ``(N, S, S, 3)`` images, in eval mode, with the
        Encoder's preprocessing (validation mAP)."""
        self.net.eval()
        out = []
        for i in range(0, len(images), batch):
            x = self.model_input(images[i:i + batch])
            autocast = torch.autocast("cuda", dtype=torch.float16) if self.use_amp \
                else contextlib.nullcontext()
            with autocast:
                out.append(self.net(x).float().cpu().numpy())
        return np.concatenate(out)

    def shipped_state(self) -> dict[str, torch.Tensor]:
        """A copy of the weights the model file would hold now (the EMA when on)."""
        state = self.ema if self.ema is not None else self.net.state_dict()
        return {k: v.detach().clone() for k, v in state.items()}

    def validation_map(self, data: PatchesInMemory, val: PatchesInMemory) -> float:
        """Validation mAP of the weights the model file would hold now (database = the
        training images, queries = ``val``)."""
        current = None
        if self.ema is not None:
            current = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            self.net.load_state_dict(self.ema)
        try:
            return self.objective.retrieval_map(self.encode(data.images), data.labels,
                                                self.encode(val.images), val.labels)
        finally:
            if current is not None:
                self.net.load_state_dict(current)

    def consider(self, epoch: int, val_map: float) -> None:
        """Keep these weights when they score better than every earlier epoch (ties keep
        the earlier, fewer steps away from the start)."""
        if val_map > self.best_map:
            self.best_map, self.best_epoch = float(val_map), int(epoch)
            self.best_state = self.shipped_state()

    # -- checkpoints
    def tensors(self) -> dict[str, torch.Tensor]:
        t = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        for name, module in self.objective.extra.items():
            t.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
        if self.ema is not None:
            t.update({f"ema.{k}": v for k, v in self.ema.items()})
            t["ema_steps"] = torch.tensor(self.ema_steps, dtype=torch.int64)
        if self.best_state is not None:
            t.update({f"best.{k}": v for k, v in self.best_state.items()})
        t["rng.torch"] = torch.get_rng_state()
        if self.is_cuda:
            t["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        for name in ("augment", "triplets"):
            gen = getattr(self, f"gen_{name}")
            if gen is not None:
                t[f"gen.{name}"] = gen.get_state()
        return t

    def save(self, out_dir: Path, class_names: list[str]) -> None:
        optim = {"optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}
        meta = {"epoch": self.epoch, "batch": self.batch, "stage": self.stage,
                "config": self.cfg.to_dict(), "class_names": class_names,
                "loss_sum": self.loss_sum, "loss_count": self.loss_count,
                "history": self.history, "log": self.log, "seconds": self.seconds,
                "best_map": self.best_map, "best_epoch": self.best_epoch}
        ckpt.save_checkpoint(out_dir, self.tensors(), optim, meta)

    def restore(self, out_dir: Path) -> None:
        tensors, optim, meta = ckpt.load_checkpoint(out_dir)
        self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        for name, module in self.objective.extra.items():
            prefix = f"{name}."
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                                    if k.startswith(prefix)})
        if self.ema is not None and "ema_steps" in tensors:
            self.ema = {k[4:]: v.clone() for k, v in tensors.items() if k.startswith("ema.")}
            self.ema_steps = int(tensors["ema_steps"])
        torch.set_rng_state(tensors["rng.torch"])
        if self.is_cuda and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.epoch, self.batch = int(meta["epoch"]), int(meta["batch"])
        self.loss_sum, self.loss_count = float(meta["loss_sum"]), int(meta["loss_count"])
        self.history, self.log = list(meta["history"]), list(meta["log"])
        self.seconds = float(meta["seconds"])
        self.best_map = float(meta.get("best_map", -1.0))
        self.best_epoch = int(meta.get("best_epoch", -1))
        best = {k[5:]: v.clone() for k, v in tensors.items() if k.startswith("best.")}
        self.best_state = best or None
        self._build_optimizer(meta["stage"])
        self.optimizer.load_state_dict(optim["optimizer"])
        self.scheduler.load_state_dict(optim["scheduler"])
        self.scaler.load_state_dict(optim["scaler"])
        self._saved_gens = {k[4:]: v for k, v in tensors.items() if k.startswith("gen.")}


def check_resumable_folder(out_dir: Path) -> None:
    """Raise a one-line ModelError unless ``out_dir`` holds a training checkpoint to resume."""
    if not ckpt.checkpoint_exists(out_dir):
        where = "(the folder does not exist)" if not Path(out_dir).exists() else "in this folder"
        raise ModelError(out_dir, f"no training checkpoint to resume {where}; run without "
                                  "--resume to start afresh")


def _check_resumable(meta: dict, cfg: TrainConfig, class_names: list[str], out_dir: Path) -> None:
    # via from_dict: fields added since the checkpoint was written compare as their defaults
    saved = TrainConfig.from_dict(meta.get("config", {})).to_dict()
    current = cfg.to_dict()
    ignore = {"device", "name", "amp"}
    diff = sorted(k for k in set(saved) | set(current)
                  if k not in ignore and saved.get(k) != current.get(k))
    if diff:
        k = diff[0]
        raise ModelError(out_dir, f"cannot resume: the checkpoint was made with a different "
                                  f"config ({k}: {saved.get(k)!r} vs {current.get(k)!r})")
    if meta.get("class_names") != class_names:
        raise ModelError(out_dir, "cannot resume: the training classes differ from the checkpoint")


def train(config: TrainConfig, train_entries: Sequence, out_dir, progress: Optional[
        ProgressCallback] = None, resume: bool = False, val_entries: Optional[Sequence] = None,
          split: Optional[dict] = None) -> TrainResult:
    """Train ``config.arch`` on ``train_entries`` (PatchEntry-like: ``.path``, ``.label``).

    Writes ``out_dir/checkpoint.*`` after every epoch (and when cancelled) and finally
    ``out_dir/NAME.safetensors`` + ``NAME.json`` (``NAME`` = ``config.name`` or
    ``ARCH-BITS-DATASET``). ``resume`` continues from the checkpoint in ``out_dir`` (which must
    come from the same config and classes); without one it is a ModelError. ``Cancelled``
    raised by ``progress`` writes a checkpoint and is re-raised. ``val_entries`` adds a per-epoch
    mAP (database = training set, queries = val) to the log. ``split`` (a Split's JSON dict) is
    recorded in the model card.
    """
    cfg = config.resolved()
    out_dir = Path(out_dir)
    if resume:
        check_resumable_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    started = time.perf_counter()
    data = PatchesInMemory(train_entries, cfg.input_size)
    val = PatchesInMemory(val_entries, cfg.input_size, data.class_names) if val_entries else None
    run = _Run(cfg, data, device)
    if resume:
        _, _, meta = ckpt.load_checkpoint(out_dir)
        _check_resumable(meta, cfg, data.class_names, out_dir)
        run.restore(out_dir)
    if cfg.method == "head":
        return _fit_head_only(run, cfg, data, device, out_dir, split, progress, started)
    session_start = run.seconds
    loader_pin = run.is_cuda
    end = cfg.epochs if cfg.stop_epoch is None else cfg.stop_epoch
    select = cfg.keep_best_epoch and val is not None
    if select and run.best_state is None:  # epoch 0: the start as it is is a candidate
        run.consider(0, run.validation_map(data, val))
    try:
        report(progress, "training", run.epoch, end, f"{cfg.arch}-{cfg.bits}")
        while run.epoch < end:
            epoch = run.epoch
            stage = run.stage_of(epoch)
            if stage != run.stage:  # a stage boundary (DCH: pretrain -> finetune)
                run.enter_stage(stage, epoch)
            run.gen_augment = epoch_generator(cfg.seed, epoch, _AUGMENT)
            run.gen_triplets = epoch_generator(cfg.seed, epoch, _TRIPLETS)
            if run.batch > 0:  # resuming mid-epoch: generators continue where they stopped
                for name, state in run._saved_gens.items():
                    getattr(run, f"gen_{name}").set_state(state)
            run._saved_gens = {}
            sampler = run._sampler(epoch)
            sampler.batches = sampler.batches[run.batch:]
            t0 = time.perf_counter()
            for pixels, labels in make_loader(data, sampler, loader_pin):
                loss = run.step(pixels, labels)
                run.batch += 1
                run.loss_sum += loss
                run.loss_count += 1
                run.seconds = session_start + time.perf_counter() - started
                report(progress, "training", epoch, end,
                       f"epoch {epoch + 1}/{end} batch {run.batch}/"
                       f"{run.steps_per_epoch} loss {loss:.4f}")
            mean_loss = run.loss_sum / max(1, run.loss_count)
            entry = {"epoch": epoch + 1, "stage": stage, "loss": mean_loss,
                     "lr": run.scheduler.get_last_lr()[0],
                     "epoch_seconds": round(time.perf_counter() - t0, 3)}
            if val is not None:
                entry["val_map"] = run.validation_map(data, val)
                if select:
                    run.consider(epoch + 1, entry["val_map"])
            run.history.append(mean_loss)
            run.log.append(entry)
            run.epoch, run.batch, run.loss_sum, run.loss_count = epoch + 1, 0, 0.0, 0
            run.seconds = session_start + time.perf_counter() - started
            run.save(out_dir, data.class_names)
            report(progress, "training", epoch + 1, end,
                   f"epoch {epoch + 1}/{end} loss {mean_loss:.4f}")
    except Cancelled:
        run.seconds = session_start + time.perf_counter() - started
        run.save(out_dir, data.class_names)
        raise
    return _finish(run, cfg, data, device, out_dir, split)


def _fit_head_only(run: _Run, cfg: TrainConfig, data: PatchesInMemory, device: torch.device,
                   out_dir: Path, split: Optional[dict], progress, started: float) -> TrainResult:
    """``method="head"``: the start's net with a refitted hash layer (seconds, so no
    checkpoint: a cancelled fit leaves nothing to resume)."""
    from hashview.training.head_fit import fit_hash_head

    if run.net.hash_head() is None:
        raise ModelError(out_dir, f"{cfg.arch} has no single hash layer to refit; train the "
                                  "whole network (method 'network')")
    fitted = fit_hash_head(run, progress)
    run.best_state = run.ema = None  # the fitted net is what ships
    run.history = list(fitted.pop("history"))
    run.log = [{"stage": "head", "epochs": len(run.history), "loss": run.history[-1]}]
    run.seconds = time.perf_counter() - started
    return _finish(run, cfg, data, device, out_dir, split, {"head_fit": fitted})


def _finish(run: _Run, cfg: TrainConfig, data: PatchesInMemory, device: torch.device,
            out_dir: Path, split: Optional[dict], extra: Optional[dict] = None) -> TrainResult:
    shipped = run.best_state if run.best_state is not None else run.ema
    if shipped is not None:  # ship the kept epoch's weights, else the averaged ones
        run.net.load_state_dict({k: v.to(run.device) for k, v in shipped.items()})
    run.net.eval()
    training = {"config": cfg.to_dict(), "epochs": cfg.epochs, "seconds": round(run.seconds, 2),
                "device": str(device), "torch_threads": torch.get_num_threads(),
                "torch_version": torch.__version__, "data": data.describe(),
                "history": run.history, "log": run.log}
    if run.init_summary is not None:
        training["init_from"] = run.init_summary
    training.update(extra or {})
    if run.best_state is not None:
        training["kept_epoch"] = run.best_epoch
        training["kept_val_map"] = round(run.best_map, 4)
    card = ModelCard(
        name=cfg.model_name(), arch=cfg.arch, bits=cfg.bits, input_size=cfg.input_size,
        mean=run.model_input.mean, std=run.model_input.std,
        description=f"{cfg.arch.upper()} {cfg.bits}-bit, trained by HashView on "
                    f"{cfg.dataset} ({len(data)} images, {data.n_classes} classes)",
        training=training, split=split, metrics={}, trained=True,
        n_classes=data.n_classes, class_names=list(data.class_names))
    stem = out_dir / cfg.model_name()
    net = run.net.to("cpu", memory_format=torch.contiguous_format)
    with torch.no_grad():  # the file stores fp16 parameters: make the returned net equal it
        for param in net.parameters():
            param.copy_(param.half().float())
    card = save_model(net, card, stem)
    return TrainResult(stem.with_name(stem.name + ".safetensors"), card, list(run.history),
                       run.seconds, list(run.log), net)

