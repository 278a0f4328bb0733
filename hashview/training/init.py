"""Start a training run from a trained model's weights (fine-tuning, transfer between sets).

``init_weights(net, cfg)`` copies every tensor of the ``cfg.init_from`` model whose name and
shape match the new net's; what does not match (a classifier over another label set, an input-
size dependent tensor) keeps its fresh seeded initialisation and is listed in the returned
summary, which the model card records. The source model is loaded through
:func:`hashview.models.load_model` (safetensors, sha256 checked, never unpickled) and must have
the same architecture (another would share no weights). Another code length is allowed: the
feature layers are copied and the hash layer (whose shape depends on the bits) starts fresh,
which the summary says. The summary also records what the source had seen
(:func:`hashview.models.lineage.start_record`), so the new model's exposure stays known where
the source file is gone.
"""

from __future__ import annotations

import torch

from hashview.errors import ModelError
from hashview.models.lineage import start_record


def init_weights(net: torch.nn.Module, arch: str, bits: int, init_from: str) -> dict:
    """Copy matching weights of ``init_from`` into ``net``; a summary dict for the card."""
    from hashview.models import load_model

    source = load_model(init_from, device="cpu")
    card = source.card
    if card.arch != arch:
        raise ModelError(init_from, f"cannot start from this model: it is {card.arch}-"
                                    f"{card.bits}, the run trains {arch}-{bits}")
    theirs = source.net.state_dict()
    ours = net.state_dict()
    copied, skipped = [], []
    for name, tensor in ours.items():
        other = theirs.get(name)
        if other is not None and other.shape == tensor.shape:
            with torch.no_grad():
                tensor.copy_(other.to(tensor.dtype))
            copied.append(name)
        else:
            skipped.append(name)
    if not copied:
        raise ModelError(init_from, "cannot start from this model: no weight matches")
    seen = start_record(card)
    if card.source == "bundled":  # found by name wherever HashView runs, with its splits: the
        seen["splits"] = []       # names suffice (an IDC split alone is ~0.4 MB of card)
    return {"model": card.name, "sha256": card.sha256, "bits": int(card.bits),
            "tensors_copied": len(copied), "tensors_kept_fresh": skipped,
            "hash_layer_fresh": int(card.bits) != int(bits), "seen": seen}
