"""Pixels -> the normalised float batch a model's net takes, defined once.

Indexing and queries (:class:`hashview.encode.Encoder`), explanations (:mod:`hashview.explain`)
and the training loop (its steps after augmentation and its validation encodes) all go through
:class:`ModelInput`: separate copies of this arithmetic once drifted apart, and a patch's query
code then differed from its indexed code.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from hashview.models.cards import DEFAULT_MEAN, DEFAULT_STD
from hashview.tiling import SQUARE_RESAMPLE

PixelSource = Union[Image.Image, np.ndarray]


def image_to_array(image: Image.Image, size: int) -> np.ndarray:
    """RGB uint8 ``(size, size, 3)``, resized only if not already that size.

    Training, indexing, queries and explanations all resize through here or through
    :func:`hashview.tiling.square_tile`, with the same filter (``SQUARE_RESAMPLE``), so one image
    gets one code whichever path it takes.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), SQUARE_RESAMPLE)
    return np.asarray(image, dtype=np.uint8)


class ModelInput:
    """uint8 RGB pixels -> ``(x / 255 - mean) / std`` as a float32 ``(B, 3, S, S)`` batch on
    ``device``, for one model's ``input_size``, ``mean`` and ``std``.

    The arithmetic runs in pixel units, ``(p - 255 mean) * (1 / (255 std))``, because libraries
    were indexed with exactly that rounding: another order of operations moves the relaxed codes
    by an ulp, enough to flip a bit that sits near 0.

    Batches are built as uint8 on the CPU (pinned on CUDA) and travel to the device as uint8,
    4x less to copy than float, with a non-blocking copy; they are normalised there.
    ``channels_last`` gives the batch that memory format (the nets run faster so, on CUDA and
    on CPU), else contiguous NCHW.
    """

    def __init__(self, input_size: int, mean: Sequence[float] = DEFAULT_MEAN,
                 std: Sequence[float] = DEFAULT_STD,
                 device: Union[str, torch.device] = "cpu", channels_last: bool = True):
        self.input_size = int(input_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.device = torch.device(device)
        self.channels_last = channels_last
        shape = (1, 3, 1, 1)
        self._offset = torch.tensor(self.mean, dtype=torch.float32,
                                    device=self.device).view(shape) * 255.0
        self._scale = 1.0 / (torch.tensor(self.std, dtype=torch.float32,
                                          device=self.device).view(shape) * 255.0)

    @classmethod
    def for_card(cls, card, device: Union[str, torch.device] = "cpu",
                 channels_last: bool = True) -> "ModelInput":
        """The input of the model a :class:`hashview.models.ModelCard` describes."""
        return cls(card.input_size, card.mean, card.std, device, channels_last)

    def __call__(self, images: Union[Sequence[PixelSource], np.ndarray]) -> torch.Tensor:
        """The net's input for PIL images, ``(S, S, 3)`` uint8 arrays or one ``(B, S, S, 3)``
        uint8 array."""
        return self.normalise(self.to_device(self.pixel_batch(images)))

    def array(self, image: PixelSource) -> np.ndarray:
        """RGB uint8 ``(S, S, 3)`` of a PIL image; an array is taken as already that."""
        return image if isinstance(image, np.ndarray) else image_to_array(image, self.input_size)

    def pixel_batch(self, images: Union[Sequence[PixelSource], np.ndarray]) -> torch.Tensor:
        """uint8 ``(B, S, S, 3)`` on the CPU, pinned when the device is CUDA."""
        if isinstance(images, np.ndarray):
            if images.ndim != 4:
                raise ValueError(f"expected a (B, S, S, 3) batch, got shape {images.shape}")
            pixels = torch.from_numpy(images)
        else:
            pixels = torch.from_numpy(np.stack([self.array(image) for image in images]))
        return pixels.pin_memory() if self.device.type == "cuda" else pixels

    def to_device(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, S, S, 3)`` -> float32 ``(B, 3, S, S)`` on the device, still in pixel
        units [0, 255] (augmentation may come next)."""
        x = pixels.to(self.device, non_blocking=True)
        # NHWC permuted to NCHW is already channels_last in memory; .float() keeps it.
        return x.permute(0, 3, 1, 2).float()

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Float ``(B, 3, S, S)`` in pixel units [0, 255] -> the net's input."""
        x = (x - self._offset) * self._scale
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=memory_format)
