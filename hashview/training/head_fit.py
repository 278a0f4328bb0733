"""Refitting only the hash head of a trained start on a small labelled folder.

``TrainConfig.method = "head"``, the default when ``hashview train`` starts from a trained
model (:data:`hashview.training.defaults.FINE_TUNE_RECIPE`). The start's network stays as it
is; its features (the input of the hash layer) of every training patch, plain and in
``VIEWS - 1`` augmented views, are computed once, and a new hash layer of ``bits`` outputs is
fitted on them in seconds, so each patch's code follows its label while staying near the
start's own code:

    loss = mean((u_i . u_j / bits - s_ij)^2)     s_ij = +1 same label, -1 otherwise
         + QUANTISATION_WEIGHT * mean((|u| - 1)^2)
         + KEEP_WEIGHT * mean((u - u_start)^2)   u = tanh(head(features))

Why: on folders of 60-150 patches, training the whole network (every recipe measured in
docs/training.md) gained +0.02 vote@10 at best over its start and never beat the best bundled
model as it is, while a head on frozen features gained most of what the labels can teach
(held-out mAP of oral and bone folders 0.48-0.66 -> 0.72-0.85). The keep term matters: without it
the codes of one class collapse onto a few (9 distinct codes over 112 IDC patches); with it
they stay distinct inside a class (35) at the same mAP.

Only nets whose codes come from one linear layer (:meth:`HashingNet.hash_head`) support this:
MTH, HATDH and DCH; the others train the whole network.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from hashview.progress import report

VIEWS = 8                   # the plain patch and 7 augmented views of it
EPOCHS = 100                # passes over the features (each a few ms on a small folder)
BATCH = 256
LR = 1e-3
WEIGHT_DECAY = 1e-4
QUANTISATION_WEIGHT = 0.1
KEEP_WEIGHT = 0.3           # 0, 0.3, 1, 3 measured (docs/training.md): 0.3 keeps mAP, fewer ties


def settings() -> dict:
    """What the head fit used, for the model card."""
    return {"views": VIEWS, "epochs": EPOCHS, "batch_size": BATCH, "lr": LR,
            "weight_decay": WEIGHT_DECAY, "quantisation_weight": QUANTISATION_WEIGHT,
            "keep_weight": KEEP_WEIGHT}


def _features(run, generator: torch.Generator) -> torch.Tensor:
    """``(VIEWS, N, D)`` hash-layer inputs of every training patch, float32 on the run's
    device: view 0 plain, the others augmented as the recipe augments (its
    ``augment_options``)."""
    net = run.net
    images = torch.from_numpy(run.data.images)
    views = []
    run.gen_augment = generator
    # fp16 autocast on CUDA, as the Encoder and the run's own encode compute features
    autocast = torch.autocast("cuda", dtype=torch.float16) if run.use_amp \
        else contextlib.nullcontext()
    net.eval()
    with torch.no_grad(), autocast:
        for view in range(VIEWS):
            parts = []
            for start in range(0, len(images), BATCH):
                pixels = images[start:start + BATCH]
                if run.is_cuda:
                    pixels = pixels.pin_memory()
                x = run.prepare(pixels, do_augment=view > 0 and run.cfg.augment)
                parts.append(net.hash_features(x).float())
            views.append(torch.cat(parts))
    return torch.stack(views)


def fit_hash_head(run, progress=None) -> dict:
    """Refit ``run.net``'s hash head (the net must have one) on its frozen features of
    ``run.data``; returns the loss per epoch and the settings. ``Cancelled`` from ``progress``
    leaves the net as the start."""
    cfg, net = run.cfg, run.net
    generator = torch.Generator().manual_seed(int(cfg.seed))
    report(progress, "training", 0, EPOCHS, "features of the training patches")
    # on the run's device: 8 views of 6,130 IDC patches took 257 s on 2 CPU cores
    feats = _features(run, generator)                       # V, N, D
    device = feats.device
    views, n, dim = feats.shape
    flat = feats.reshape(-1, dim)
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    x = (flat - mean) / std
    y = torch.from_numpy(run.data.labels).to(device).repeat(views)
    bits = int(cfg.bits)
    torch.manual_seed(int(cfg.seed))
    fitted = nn.Linear(dim, bits).to(device)
    # start from the net's head as it is (the start's, or a random projection when the start
    # has another code length), in standardised units; its codes are what the keep term keeps
    start_weight, start_bias = (t.detach().float().to(device) for t in net.hash_head_weights())
    with torch.no_grad():
        fitted.weight.copy_(start_weight * std)
        fitted.bias.copy_(start_bias + (start_weight * mean).sum(1))
        start_codes = torch.tanh(fitted(x))
    optimiser = torch.optim.Adam(fitted.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    history = []
    for epoch in range(EPOCHS):
        order = torch.randperm(len(x), generator=generator).to(device)
        total, batches = 0.0, 0
        for start in range(0, len(x), BATCH):
            idx = order[start:start + BATCH]
            u = torch.tanh(fitted(x[idx]))
            same = (y[idx][:, None] == y[idx][None, :]).float() * 2 - 1
            loss = ((u @ u.T / bits - same) ** 2).mean() \
                + QUANTISATION_WEIGHT * ((u.abs() - 1) ** 2).mean() \
                + KEEP_WEIGHT * ((u - start_codes[idx]) ** 2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, batches = total + float(loss.detach()), batches + 1
        history.append(total / max(1, batches))
        report(progress, "training", epoch + 1, EPOCHS,
               f"hash head {epoch + 1}/{EPOCHS} loss {history[-1]:.4f}")
    with torch.no_grad():  # fold the standardisation in: W ((f - m) / s) + b
        weight = fitted.weight / std
        bias = fitted.bias - (fitted.weight * (mean / std)).sum(1)
        net.set_hash_head(weight, bias)
    return {"history": history, "n_features": int(dim), "n_views": int(views),
            "n_images": int(n), **settings()}
