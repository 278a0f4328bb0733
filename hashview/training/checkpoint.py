"""Training checkpoints: three files in the run folder, each written atomically.

- ``checkpoint.safetensors``: model / head weights in fp32 and RNG states (uint8 tensors);
- ``checkpoint-optim.pt``: optimiser, LR-scheduler and grad-scaler state dicts with
  ``torch.save``. They are nested dicts/lists of tensors and numbers only, so they load with
  ``torch.load(weights_only=True)`` (no arbitrary unpickling);
- ``checkpoint.json``: epoch, batch, config, history, and the SHA-256 of the two files above.

The JSON is written last and names the hashes of the files it belongs to, so a crash between
the three writes is detected on resume (a clear error) instead of mixing two epochs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from hashview.errors import ModelError
from hashview.fileio import atomic_write_bytes

WEIGHTS_FILE = "checkpoint.safetensors"
OPTIM_FILE = "checkpoint-optim.pt"
META_FILE = "checkpoint.json"
FORMAT = 1


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checkpoint_exists(out_dir: str | os.PathLike) -> bool:
    return (Path(out_dir) / META_FILE).is_file()


def save_checkpoint(out_dir: str | os.PathLike, tensors: dict[str, torch.Tensor],
                    optim_state: dict, meta: dict) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = save_safetensors_bytes(
        {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
        metadata={"format": "pt"})
    buffer = io.BytesIO()
    torch.save(optim_state, buffer)
    optim = buffer.getvalue()
    meta = dict(meta, format=FORMAT, files={WEIGHTS_FILE: _sha(weights), OPTIM_FILE: _sha(optim)})
    try:
        atomic_write_bytes(out / WEIGHTS_FILE, weights)
        atomic_write_bytes(out / OPTIM_FILE, optim)
        atomic_write_bytes(out / META_FILE, (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
    except OSError as exc:
        raise ModelError(out, f"cannot write checkpoint ({exc.strerror or exc})") from exc


def load_checkpoint(out_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """``(tensors, optimiser state, meta)``; raises :class:`ModelError` on any inconsistency."""
    out = Path(out_dir)
    try:
        meta = json.loads((out / META_FILE).read_text(encoding="utf-8"))
        weights = (out / WEIGHTS_FILE).read_bytes()
        optim = (out / OPTIM_FILE).read_bytes()
    except (OSError, ValueError) as exc:
        raise ModelError(out, f"cannot read checkpoint ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(out / META_FILE, "not a HashView training checkpoint (format)")
    files = meta.get("files", {})
    for name, data in ((WEIGHTS_FILE, weights), (OPTIM_FILE, optim)):
        if files.get(name) != _sha(data):
            raise ModelError(out / name, "checkpoint files do not match checkpoint.json "
                                         "(interrupted while saving?); start without resume")
    try:
        tensors = load_safetensors_bytes(weights)
        optim_state: Any = torch.load(io.BytesIO(optim), map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ModelError(out, f"corrupt checkpoint ({exc})") from exc
    return tensors, optim_state, meta
