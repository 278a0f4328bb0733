"""Training data: an in-memory patch dataset, seeded histology augmentation, batch samplers.

Choices:

- :class:`PatchesInMemory` decodes every image ONCE into a ``(N, S, S, 3)`` uint8 array at the
  model input size, with :func:`hashview.model_input.image_to_array` (the exact preprocessing the
  Encoder uses, so training and indexing see the same pixels). The target sets are small
  (Kather subset 264 tiles of 150 px = 18 MB; IDC 8,699 patches of 50 px upsampled to e.g.
  128 px = 430 MB at worst), so this avoids re-decoding TIFF/PNG every epoch. Bigger sets would
  need a lazy dataset.
- Augmentation (:func:`augment`) runs batch-wise on whatever device the batch lives on; every
  random number is drawn from a CPU ``torch.Generator`` that the training loop seeds from
  ``(seed, epoch)``, so a run (and a resumed run) is reproducible on CPU and CUDA alike:
  random dihedral transform (flips + 90° rotations: tissue has no orientation), a small zoom-in
  crop (scale/crop jitter, no padding artefacts), stain jitter in HED space (Tellez et al. 2018
  style: per image and stain ``c' = c * a + b``), then brightness/contrast.
- HED: Ruifrok & Johnston colour deconvolution with the same stain matrix as scikit-image
  (``rgb_from_hed``), in natural-log optical density. Unlike skimage we do not clip negative stain
  concentrations, so ``hed_to_rgb(rgb_to_hed(x)) == x`` for every pixel >= ``OD_EPS``.
- :class:`BalancedBatchSampler`: P classes x K images per batch (P = min(#classes, B // 2), so
  every anchor has a positive), each class cycled through its own shuffled permutation, so a
  small class repeats instead of being starved. Useful for triplet losses; DCH uses plain shuffles.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hashview.model_input import image_to_array
from hashview.errors import SourceError

# ---------------------------------------------------------------- dataset


class PatchesInMemory(torch.utils.data.Dataset):
    """Labelled patches held in memory as uint8 ``(S, S, 3)`` arrays.

    ``entries``: objects with ``.path`` and ``.label`` (e.g. :class:`PatchEntry`). ``class_names``
    fixes the label -> index mapping (default: sorted distinct labels); unlabelled entries or
    labels outside ``class_names`` raise :class:`SourceError`.
    """

    def __init__(self, entries: Sequence, input_size: int,
                 class_names: Optional[Sequence[str]] = None):
        self.entries = list(entries)
        if not self.entries:
            raise SourceError(None, "no training images")
        self.input_size = int(input_size)
        missing = [e.path for e in self.entries if e.label is None]
        if missing:
            raise SourceError(missing[0], f"no label ({len(missing)} unlabelled image(s)); "
                                          "use class subfolders or labels.csv")
        self.class_names = list(class_names) if class_names is not None \
            else sorted({str(e.label) for e in self.entries})
        index = {name: i for i, name in enumerate(self.class_names)}
        unknown = [e for e in self.entries if str(e.label) not in index]
        if unknown:
            raise SourceError(unknown[0].path, f"label {unknown[0].label!r} is not one of the "
                                               f"model's classes {self.class_names}")
        self.labels = np.array([index[str(e.label)] for e in self.entries], dtype=np.int64)
        self.images = np.stack([self._load(e.path) for e in self.entries])
        self._images_t = torch.from_numpy(self.images)  # shares memory, no copy
        self._labels_t = torch.from_numpy(self.labels)

    def _load(self, path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                return image_to_array(image, self.input_size)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise SourceError(path, f"cannot read image ({exc})") from exc

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._images_t[i], self._labels_t[i]

    def describe(self) -> dict:
        counts = np.bincount(self.labels, minlength=self.n_classes)
        return {"images": len(self), "input_size": self.input_size,
                "class_counts": {n: int(c) for n, c in zip(self.class_names, counts)}}


# ---------------------------------------------------------------- samplers


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one epoch and one purpose (stream), independent of global RNG."""
    g = torch.Generator()
    # Distinct large odd multipliers keep (seed, epoch, stream) triples from colliding.
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7_919 + int(stream) * 104_729)
                  % (2 ** 63))
    return g


class BalancedBatchSampler:
    """Batches of P classes x K images; ``len`` batches per epoch cover ~all images once."""

    def __init__(self, labels: Sequence[int], batch_size: int, generator: torch.Generator,
                 n_batches: Optional[int] = None):
        labels = np.asarray(labels)
        self.classes = sorted(set(labels.tolist()))
        self.by_class = {c: np.flatnonzero(labels == c) for c in self.classes}
        self.p = max(1, min(len(self.classes), batch_size // 2))
        self.k = max(1, batch_size // self.p)
        self.n_batches = n_batches or max(1, math.ceil(len(labels) / (self.p * self.k)))
        self.batches = self._plan(generator)  # fixed at construction: resumable by index

    def _plan(self, g: torch.Generator) -> list[list[int]]:
        perms = {c: idx[torch.randperm(len(idx), generator=g).numpy()]
                 for c, idx in self.by_class.items()}
        cursor = {c: 0 for c in self.classes}
        batches = []
        for _ in range(self.n_batches):
            order = torch.randperm(len(self.classes), generator=g).tolist()[: self.p]
            batch = []
            for ci in order:
                c = self.classes[ci]
                for _ in range(self.k):
                    perm = perms[c]
                    batch.append(int(perm[cursor[c] % len(perm)]))
                    cursor[c] += 1
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ShuffleBatchSampler(BalancedBatchSampler):
    """Plain shuffled mini-batches (DCH's point-wise training); last partial batch kept if >1."""

    def __init__(self, labels: Sequence[int], batch_size: int, generator: torch.Generator,
                 n_batches: Optional[int] = None):
        n = len(labels)
        perm = torch.randperm(n, generator=generator).tolist()
        batches = [perm[i:i + batch_size] for i in range(0, n, batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm needs >1 sample
            batches[-2].extend(batches.pop())
        if n_batches is not None:  # cycle through more shuffles if more batches are asked for
            while len(batches) < n_batches:
                batches += ShuffleBatchSampler(labels, batch_size, generator).batches
            batches = batches[:n_batches]
        self.batches = batches


def make_loader(dataset: PatchesInMemory, batch_sampler, pin_memory: bool):
    """DataLoader over the in-memory dataset: no workers (images are already decoded and the
    model uses the CPU cores), pinned memory on CUDA for non_blocking copies."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=0,
                                       pin_memory=pin_memory)


# ---------------------------------------------------------------- HED colour space

# Ruifrok & Johnston (2001) H&E-DAB stain vectors, rows = stains (as in skimage.color).
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29],
                             [0.07, 0.99, 0.11],
                             [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
OD_EPS = 1e-6  # floor before the log (skimage uses the same)


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] -> stain concentrations (natural-log OD units)."""
    od = -torch.log(rgb.clamp_min(OD_EPS))
    return torch.einsum("bchw,cd->bdhw", od, HED_FROM_RGB.to(rgb.device, rgb.dtype))


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hed` (not clipped; callers clamp to [0, 1])."""
    od = torch.einsum("bdhw,dc->bchw", hed, RGB_FROM_HED.to(hed.device, hed.dtype))
    return torch.exp(-od)


# ---------------------------------------------------------------- augmentation


@dataclass
class AugmentConfig:
    flips_rotations: bool = True
    max_zoom: float = 1.15        # crop side down to 1/1.15 of the tile, then resized back
    hed_scale: float = 0.05       # a ~ U(1 - s, 1 + s) per image and stain
    hed_shift: float = 0.02       # b ~ U(-s, s) per image and stain (OD units)
    brightness: float = 0.05      # additive, ~U(-s, s)
    contrast: float = 0.10        # factor ~U(1 - s, 1 + s) around the image mean
    # Colour changes beyond stain amounts, for other labs' scanners and stains (Tellez et al.,
    # Med Image Anal 2019: strong HSV + HED jitter generalised best across centres). All off by
    # default so that older recipes train exactly as before.
    hue: float = 0.0              # hue rotated by ~U(-s, s) turns (1.0 = full circle)
    saturation: float = 0.0       # saturation factor ~U(1 - s, 1 + s)
    grayscale: float = 0.0        # probability of a grey image (ignore colour altogether)

    @classmethod
    def from_options(cls, options: dict) -> "AugmentConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown augmentation option {unknown[0]!r} (options: "
                             f"{sorted(known)})")
        return cls(**options)


def _uniform(g: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float32) * (high - low) + low


def _geometry_grid(b: int, x: torch.Tensor, generator: torch.Generator,
                   cfg: AugmentConfig) -> torch.Tensor:
    """One sampling grid per image for a random dihedral transform (flip + k*90° rotation)
    composed with a zoom-in crop. A pure 90° rotation/flip maps pixel centres onto pixel
    centres, so bilinear sampling reproduces it exactly; one grid_sample does all geometry."""
    if cfg.flips_rotations:
        k = torch.randint(0, 4, (b,), generator=generator)
        flip = torch.randint(0, 2, (b,), generator=generator)
    else:
        k, flip = torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long)
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0])[k]
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0])[k]
    fx = 1.0 - 2.0 * flip.float()  # -1 mirrors the x axis
    zoom = _uniform(generator, (b,), 1.0, cfg.max_zoom) if cfg.max_zoom > 1.0 else torch.ones(b)
    scale = 1.0 / zoom
    room = 1.0 - scale  # keeps the crop inside the tile: no padding needed
    shift = _uniform(generator, (b, 2), -1.0, 1.0) * room[:, None]
    theta = torch.zeros(b, 2, 3)
    # input = R_k @ diag(fx, 1) @ (scale * output) + shift
    theta[:, 0, 0], theta[:, 0, 1] = cos * fx * scale, -sin * scale
    theta[:, 1, 0], theta[:, 1, 1] = sin * fx * scale, cos * scale
    theta[:, :, 2] = shift
    return F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)


def augment(x: torch.Tensor, generator: torch.Generator,
            config: Optional[AugmentConfig] = None) -> torch.Tensor:
    """Augment a float batch ``(B, 3, S, S)`` in [0, 1]; returns a new tensor in [0, 1].

    All randomness comes from ``generator`` (CPU) in a fixed order, so the result depends only on
    the input and the generator state, on any device.
    """
    cfg = config or AugmentConfig()
    if generator.device.type != "cpu":
        raise ValueError("augment() needs a CPU torch.Generator (reproducible on any device)")
    b, dev = x.shape[0], x.device
    x = x.contiguous()  # NCHW: the per-pixel ops below are much slower on channels_last views
    if cfg.flips_rotations or cfg.max_zoom > 1.0:
        x = F.grid_sample(x, _geometry_grid(b, x, generator, cfg), mode="bilinear",
                          padding_mode="border", align_corners=False)
    if cfg.hed_scale > 0 or cfg.hed_shift > 0:
        a = _uniform(generator, (b, 3, 1, 1), 1 - cfg.hed_scale, 1 + cfg.hed_scale)
        s = _uniform(generator, (b, 3, 1, 1), -cfg.hed_shift, cfg.hed_shift)
        hed = rgb_to_hed(x)
        x = hed_to_rgb(hed * a.to(dev, x.dtype) + s.to(dev, x.dtype)).clamp(0, 1)
    if cfg.brightness > 0 or cfg.contrast > 0:
        c = _uniform(generator, (b, 1, 1, 1), 1 - cfg.contrast, 1 + cfg.contrast).to(dev, x.dtype)
        d = _uniform(generator, (b, 1, 1, 1), -cfg.brightness, cfg.brightness).to(dev, x.dtype)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * c + mean + d).clamp(0, 1)
    if cfg.hue > 0 or cfg.saturation > 0 or cfg.grayscale > 0:
        x = _jitter_colour(x, generator, cfg)
    return x


# RGB <-> YIQ: hue is the angle of (I, Q), saturation their length, Y the grey level. A rotation
# in the I-Q plane is the usual linear approximation of an HSV hue shift (cheap, differentiable).
_YIQ_FROM_RGB = torch.tensor([[0.299, 0.587, 0.114],
                              [0.596, -0.274, -0.322],
                              [0.211, -0.523, 0.312]], dtype=torch.float32)
_RGB_FROM_YIQ = torch.linalg.inv(_YIQ_FROM_RGB)


def _jitter_colour(x: torch.Tensor, generator: torch.Generator,
                   cfg: AugmentConfig) -> torch.Tensor:
    b = x.shape[0]
    angle = _uniform(generator, (b,), -cfg.hue, cfg.hue) * 2 * math.pi
    scale = _uniform(generator, (b,), 1 - cfg.saturation, 1 + cfg.saturation)
    grey = torch.rand((b,), generator=generator) < cfg.grayscale
    scale = torch.where(grey, torch.zeros_like(scale), scale)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    yiq = torch.zeros(b, 3, 3)
    yiq[:, 0, 0] = 1.0
    yiq[:, 1, 1], yiq[:, 1, 2], yiq[:, 2, 1], yiq[:, 2, 2] = cos, -sin, sin, cos
    matrix = _RGB_FROM_YIQ @ yiq @ _YIQ_FROM_RGB  # (b, 3, 3), applied per image
    x = torch.einsum("bij,bjhw->bihw", matrix.to(x.device, x.dtype), x)
    return x.clamp(0, 1)
