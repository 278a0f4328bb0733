"""Training objectives: one per architecture, so that the loop (:mod:`hashview.training.loop`)
stays generic. A new architecture adds one model file (``hashview/models/NAME.py``, registered
with ``@register("NAME")``), one objective file here (``NAME.py``), and its row in
:data:`hashview.models.card_limits.ARCHITECTURES` (code kind, keyword bounds, input sizes): that
table is the one list of architectures the registry, the objectives and the CLI read.

An objective is a subclass of :class:`~hashview.training.objectives.base.Objective` registered
with ``@register_objective`` (its ``arch`` attribute is the registry name). The loop uses it so:

Before training (class level, no net yet), :meth:`TrainConfig.resolved` reads
    ``input_size``, ``optimizer``, ``sampler``   defaults for the config's None / "auto" fields;
    ``options``                                  the defaults of ``cfg.objective_options``, the
                                                 objective's own knobs (loss weights, margins,
                                                 head sizes...); the resolved config holds every
                                                 key, unknown keys are an error;
    ``resolve(cfg) -> dict``                     further resolved fields (DCH: pretrain_epochs);
    ``check(cfg) -> str | None``                 why a resolved config is invalid.
Building the run (under ``torch.manual_seed(cfg.seed)``):
    ``build_kwargs(cfg, n_classes) -> dict``     kwargs of ``build_model`` (default: arch_kwargs);
    ``Objective(cfg, net, n_classes)``           creates ``self.extra``: named extra trainable
                                                 modules (classifier heads, an ArcFace head...).
                                                 They are checkpointed as "<name>.<param>",
                                                 trained, moved to the device, but never shipped
                                                 in the model file (only ``net`` is).
Training:
    ``stages() -> [(name, epochs), ...]``        default ``[("hash", cfg.epochs)]``; each stage
                                                 gets a fresh optimiser and cosine schedule;
    ``parameters(stage)``                        what the optimiser updates (default: net + extra);
    ``enter_stage(stage, generator)``            at a stage boundary (DCH re-initialises its
                                                 softmax from the seeded ``generator``);
    ``loss(stage, x, y, generator)``             ``(scalar, {part: float})`` of a normalised
                                                 batch; ``generator`` is the seeded stream for
                                                 random choices (triplets); fp32 losses;
    ``retrieval_map(db, db_labels, q, q_labels)`` the per-epoch validation mAP of ``net(x)``
                                                 outputs; default Hamming ranking of sign codes.
                                                 A float-descriptor net (``code_kind`` "float")
                                                 overrides it with its own ranking.

The shipped net is whatever ``build_model`` returns (a ``HashingNet``); ``net(x)`` is what the
encoder stores. Checkpoints, resume, EMA, AMP, seeding, cancel and the model card are the loop's.
"""

from __future__ import annotations

import importlib

from hashview.errors import ModelError
from hashview.models.card_limits import ARCHITECTURES
from hashview.training.objectives.base import Objective

_OBJECTIVES: dict[str, type[Objective]] = {}
# Modules in this package that define objectives (imported lazily by objective_class): one
# per architecture of the one table that lists them, hashview.models.card_limits.ARCHITECTURES.
_BUILTIN = tuple(ARCHITECTURES)


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: register ``cls`` under ``cls.arch``."""
    if not cls.arch:
        raise ValueError(f"{cls.__name__} has no arch name")
    if cls.arch in _OBJECTIVES and _OBJECTIVES[cls.arch] is not cls:
        raise ValueError(f"an objective for {cls.arch!r} is already registered")
    _OBJECTIVES[cls.arch] = cls
    return cls


def _ensure_builtin() -> None:
    for module in _BUILTIN:
        importlib.import_module(f"{__name__}.{module}")


def trainable_architectures() -> dict[str, str]:
    """``{arch: one-line title}`` of every architecture HashView can train, in ``_BUILTIN``
    order (the app lists them so)."""
    _ensure_builtin()
    return {name: cls.title for name, cls in _OBJECTIVES.items()}


def objective_class(arch: str) -> type[Objective]:
    _ensure_builtin()
    cls = _OBJECTIVES.get(arch)
    if cls is None:
        raise ModelError(None, f"training supports {sorted(_OBJECTIVES)}, not {arch!r}")
    return cls


__all__ = ["Objective", "objective_class", "register_objective", "trainable_architectures"]
