"""Images -> binary codes: batching, device placement and bit packing.

Codes follow both papers' convention: bit = 1 iff the relaxed code is > 0; sign(0) = -1 gives
bit 0. Bits are packed big-endian along each row (``np.packbits(..., bitorder="big")``), so code
bit 0 is the most significant bit of byte 0; this is the layout FAISS binary indexes use.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from hashview.code_kinds import BINARY, code_kind
from hashview.devices import pick_device  # re-exported: hashview.encode.pick_device
from hashview.errors import ModelError
from hashview.model_input import ModelInput, image_to_array  # image_to_array re-exported
from hashview.models.store import LoadedModel
from hashview.progress import ProgressCallback, report
from hashview.timing import NO_TIMES

DEFAULT_BATCH_CPU = 64
DEFAULT_BATCH_CUDA = 256
# Measured on CPU (docs/models.md, torch 2.14, 2 threads, batch 32): channels_last fp32 is
# ~1.3-1.6x faster than NCHW for both HATDH and DCH, so it is used on CPU as well as CUDA.
CPU_CHANNELS_LAST = True
# A CPU batch smaller than this (a search query: one or a few tiles) runs on one torch thread:
# it gains little from a second one, and on a busy CPU waiting for OpenMP workers cost 5x
# (one tile at load 13 on 2 cores: 26 ms on one thread, 146 ms on two; docs/benchmarks.md,
# region section). The count is per calling thread (OpenMP), so other threads are untouched.
CPU_SINGLE_THREAD_BELOW = 4


# ---------------------------------------------------------------- code packing

def pack_codes(relaxed: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """``(N, bits)`` real codes -> ``(N, bits // 8)`` uint8; bit = 1 iff value > 0."""
    if isinstance(relaxed, torch.Tensor):
        relaxed = relaxed.detach().float().cpu().numpy()
    return BINARY.from_relaxed(relaxed)


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """``(N, bits // 8)`` uint8 -> ``(N, bits)`` int8 codes in {-1, +1}."""
    packed = np.asarray(packed, dtype=np.uint8)
    unpacked = np.unpackbits(packed, axis=-1, count=bits, bitorder="big").astype(np.int8)
    return unpacked * 2 - 1


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    return _POPCOUNT[x]


def hamming_distance(a_packed: np.ndarray, b_packed: np.ndarray) -> np.ndarray:
    """Hamming distances between packed codes.

    ``a (N, B)`` and ``b (M, B)`` give an ``(N, M)`` matrix; a 1-D ``a`` or ``b`` (one code)
    drops that axis. Dense and exact: meant for small sets and tests (search uses FAISS).
    """
    a = np.asarray(a_packed, dtype=np.uint8)
    b = np.asarray(b_packed, dtype=np.uint8)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"code lengths differ: {a.shape[-1]} vs {b.shape[-1]} bytes")
    xor = np.bitwise_xor(a[..., None, :], b[None, ...]) if a.ndim == 2 and b.ndim == 2 \
        else np.bitwise_xor(a, b)
    return _popcount(xor).sum(axis=-1, dtype=np.int64)


# ---------------------------------------------------------------- encoder

@contextlib.contextmanager
def _one_torch_thread():
    """torch runs on one intra-op thread in the calling thread, restored afterwards."""
    saved = torch.get_num_threads()
    if saved == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class Encoder:
    """Encodes PIL images with a loaded model into packed binary codes (or, for a float model,
    into L2-normalised float32 descriptors).

    Preprocessing: :class:`hashview.model_input.ModelInput` for the card (RGB, resize to
    ``card.input_size``, ``(x / 255 - mean) / std``), normalised on the device. On CUDA
    the net runs in channels_last under fp16 autocast, from pinned memory with non-blocking
    copies, and the next batch is prepared on the CPU while the GPU works on the current one.
    """

    def __init__(self, loaded_model: LoadedModel, device: Union[str, torch.device] = "auto",
                 batch_size: Optional[int] = None, stain_normaliser=None):
        self.card = loaded_model.card
        # a hashview.stain.StainTransfer every tile is re-stained with at input size (a
        # library's stain reference); one at a time: torchstain's error handling swaps the
        # process-wide warning filters, which reader threads must not do at once
        self.stain_normaliser = stain_normaliser
        self._stain_lock = threading.Lock()
        self.device = pick_device(device)
        self.is_cuda = self.device.type == "cuda"
        self.batch_size = int(batch_size or (DEFAULT_BATCH_CUDA if self.is_cuda
                                             else DEFAULT_BATCH_CPU))
        if self.batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.input_size = int(self.card.input_size)
        self.bits = int(self.card.bits)
        # "binary": packed sign bits; "float": L2-normalised float32 descriptors (bits = dims).
        self.code_kind = getattr(loaded_model.net, "code_kind", self.card.code_kind)
        self._codes_kind = code_kind(self.code_kind)
        self.channels_last = self.is_cuda or CPU_CHANNELS_LAST
        net = loaded_model.net.eval().to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.model_input = ModelInput.for_card(self.card, self.device, self.channels_last)

    # -- public API

    def to_input(self, image: Image.Image) -> np.ndarray:
        """The model's input for ``image``: RGB uint8 ``(S, S, 3)``; ``encode*`` accept these
        as well as PIL images, so loader threads can do this step off the forward thread.
        With a stain normaliser the array is re-stained to its reference."""
        pixels = self.model_input.array(image)
        if self.stain_normaliser is None:
            return pixels
        with self._stain_lock:
            return self.stain_normaliser.restain(pixels)

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Packed codes ``(N, bits // 8)`` uint8; float32 ``(N, bits)`` L2-normalised
        descriptors for a float model (``code_kind == "float"``)."""
        return self._codes_kind.from_relaxed(self.encode_relaxed(images))

    def encode_relaxed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Relaxed codes ``(N, bits)`` float32 in (-1, 1)."""
        parts = list(self.encode_batches(images, relaxed=True))
        if not parts:
            return np.zeros((0, self.bits), dtype=np.float32)
        return np.concatenate(parts, axis=0)

    def encode_batches(self, images: Iterable[Image.Image],
                       progress: Optional[ProgressCallback] = None,
                       total: Optional[int] = None, relaxed: bool = False,
                       times=NO_TIMES) -> Iterator[np.ndarray]:
        """Yield one array per batch (packed uint8; float32 with ``relaxed`` or for a float
        model), in order.

        Consumes ``images`` (PIL images or :meth:`to_input` arrays) lazily, so it works on
        generators of tiles. Reports ``Progress("encoding", done, total)``; a callback raising
        Cancelled stops it. ``times`` (a :class:`hashview.timing.StageTimes`) gets the
        "batch" (stack, pin), "forward" and "pack" seconds; on CUDA "forward" is the launch plus
        the wait for the results.
        """
        if total is None and hasattr(images, "__len__"):
            total = len(images)  # type: ignore[arg-type]
        relaxed = relaxed or self._codes_kind.keeps_net_output
        done = 0
        report(progress, "encoding", 0, total)
        pending = None  # (host output tensor, cuda event or None, batch length)
        # inference_mode is entered per batch in _launch, never across a yield, so the
        # caller's autograd state is untouched while it holds the generator.
        for batch in self._chunks(images):
            with times.stage("batch", len(batch)):
                staged = self._stage(batch)    # CPU work overlaps the GPU's previous batch
            with times.stage("forward", len(batch)):
                launched = self._launch(staged)
            if pending is not None:
                done += pending[2]
                yield self._finish(pending, relaxed, times)
                report(progress, "encoding", done, total)
            pending = launched + (len(batch),)
            if not self.is_cuda:
                # a CPU forward has already finished: hand the batch over now, so progress
                # (and a cancel checked at each report) is never a batch behind
                done += pending[2]
                yield self._finish(pending, relaxed, times)
                report(progress, "encoding", done, total)
                pending = None
        if pending is not None:
            done += pending[2]
            yield self._finish(pending, relaxed, times)
            report(progress, "encoding", done, total)

    # -- internals

    def _chunks(self, images: Iterable[Image.Image]) -> Iterator[list]:
        batch: list = []
        for image in images:
            batch.append(image)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _stage(self, batch: list) -> torch.Tensor:
        if self.stain_normaliser is not None:  # arrays come from to_input: already re-stained
            batch = [item if isinstance(item, np.ndarray) else self.to_input(item)
                     for item in batch]
        return self.model_input.pixel_batch(batch)  # (B, S, S, 3) uint8, pinned on CUDA

    @torch.inference_mode()
    def _launch(self, pixels: torch.Tensor):
        x = self.model_input.normalise(self.model_input.to_device(pixels))
        autocast = (torch.autocast("cuda", dtype=torch.float16) if self.is_cuda
                    else contextlib.nullcontext())
        threads = (_one_torch_thread() if not self.is_cuda and len(x) < CPU_SINGLE_THREAD_BELOW
                   else contextlib.nullcontext())
        with autocast, threads:
            out = self.net(x)
        if not self.is_cuda:
            return out.float(), None
        host = torch.empty(out.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(out.float(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    @staticmethod
    def _finish(pending, relaxed: bool, times=NO_TIMES) -> np.ndarray:
        host, event, count = pending[0], pending[1], pending[2]
        if event is not None:
            with times.stage("forward", 0):  # the GPU's share; the batch was counted at launch
                event.synchronize()
        values = host.numpy()
        if relaxed:
            return values.astype(np.float32, copy=False)
        with times.stage("pack", count):
            return pack_codes(values)
