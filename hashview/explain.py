"""Why does a hit match its query? Grad-CAM maps for *code similarity* (Qt-free).

Written by hand on purpose: the ``grad-cam`` (pytorch-grad-cam) package is not a dependency of
HashView and cannot be added now, and the ~100 lines needed here are easier to audit than a
wrapper around a classification-oriented library.

Target score
    A hashing net has no class logit, so the score explained is the similarity the search ranks
    by, made differentiable on one side only::

        s(A -> B) = < tanh(h(A)), stopgrad(sign(h(B))) > / bits      (in (-1, 1))

    (for a float-descriptor model such as LGFFEM, ``s(A -> B) = <d(A), stopgrad(d(B))>``, the
    cosine its search ranks by, since its descriptors are unit vectors)

    ``tanh(h(A))`` is A's relaxed code (``HashingNet.forward``) and ``sign(h(B))`` is B's binary
    code as stored in the library (sign(0) = -1, the bit convention of :mod:`hashview.encode`).
    ``1 - s`` is, up to the relaxation, the normalised Hamming distance: raising ``s`` lowers the
    distance. The map on A therefore shows *what in A makes it match B*. :func:`explain_pair`
    computes both directions: ``map_a`` from ``s(A -> B)``, ``map_b`` from ``s(B -> A)``.

Layer
    ``net.feature_layer()`` of each architecture (see its ``feature_layer`` docstring):

    * HATDH: the HCAM output. It is the last spatial map, the attention-refined tensor that is
      average-pooled straight into the 512-d feature F feeding the hash layer, so nothing after
      it mixes positions and the Grad-CAM linearisation is as faithful as it can be; the map also
      includes the HCAM's own spatial re-weighting (a map taken before HCAM would ignore it).
      It is coarse: input/32 (3x3 cells at 96 px input).
    * DCH: the last conv block (conv-BN-ReLU 64 ch, input/2 resolution, before the last
      max-pool). The deepest, most semantic conv map; after it come only a max-pool and a 4x4
      average pool before the fully connected layers. At 64 px input it is 32x32, which gives
      much finer maps than HATDH's.

Method
    Forward hook on that module captures its activations ``A`` (C, h, w); a tensor hook
    (``Tensor.register_hook``) captures ``dS/dA``. Grad-CAM: ``w_c = mean_hw(dS/dA_c)``,
    ``cam = ReLU(sum_c w_c A_c)``. Grad-CAM++ (Chattopadhay et al. 2018, the closed form with
    the exponential-score assumption used by common implementations):
    ``alpha = g^2 / (2 g^2 + sum_hw(A) g^3)``, ``w_c = sum_hw(alpha * ReLU(g))``.
    The cam is upsampled bilinearly to the *input image's* size (the model sees the whole image
    resized to ``card.input_size``, no crop, so the cam grid covers the whole image) and divided
    by its maximum, giving [0, 1] with 0 meaning "no positive evidence". A map whose ReLU is zero
    everywhere (no region raises the similarity, e.g. a pair whose codes disagree on nearly
    every bit) stays all zero and is reported in ``stats["a_empty"]`` / ``stats["b_empty"]``.

Side effects: none. The net is put in eval mode (BatchNorm must use its running statistics,
and it is what search uses); gradients are taken with ``torch.autograd.grad``, so parameters
get no ``.grad``; hooks are removed in ``finally``. The hooks ignore other threads, so an
``Encoder`` sharing the net in another thread is not disturbed (but see the GUI, which uses its
own copy of the net anyway).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hashview.devices import pick_device
from hashview.model_input import ModelInput
from hashview.models.store import LoadedModel

METHODS = ("gradcam", "gradcam++")
_EPS = 1e-12


@dataclass
class PairExplanation:
    map_a: np.ndarray          # float32 (H_a, W_a) in [0, 1]: what in A matches B
    map_b: np.ndarray          # float32 (H_b, W_b) in [0, 1]: what in B matches A
    similarity: float          # s(A -> B) = <tanh h(A), sign h(B)> / bits
    stats: dict = field(default_factory=dict)


# ---------------------------------------------------------------- inputs

def _model_input(loaded_model: LoadedModel,
                 device: Union[str, torch.device]) -> ModelInput:
    """The images' net input exactly as the Encoder computes it, so the codes explained are the
    codes searched."""
    return ModelInput.for_card(loaded_model.card, pick_device(device))


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


# ---------------------------------------------------------------- core

def _codes(net, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


def _signed(relaxed: torch.Tensor) -> torch.Tensor:
    """Binary code in {-1, +1} with sign(0) = -1 (bit = 1 iff value > 0)."""
    return torch.where(relaxed > 0, 1.0, -1.0).to(relaxed.dtype)


def _is_float(net) -> bool:
    return getattr(net, "code_kind", "binary") == "float"


def _target(net, codes: torch.Tensor) -> torch.Tensor:
    """B's code as the search compares it, scaled so that ``<A's output, target>`` is the score:
    sign bits / bits for a binary model (``<tanh h(A), sign h(B)> / bits``); for a float model
    (unit descriptors) the descriptor itself, so the score is the cosine the search ranks by
    (its distance is ``1 - cosine``)."""
    if _is_float(net):
        return codes
    return _signed(codes) / codes.shape[-1]


def _cam(net, x: torch.Tensor, target: torch.Tensor, method: str,
         out_size: tuple[int, int]) -> tuple[np.ndarray, float, bool]:
    """(map (H, W) in [0,1], similarity, empty) of ``x`` against the fixed ``target`` (see
    :func:`_target`)."""
    layer = net.feature_layer()
    owner = threading.get_ident()
    store: dict = {}

    def grad_hook(grad: torch.Tensor) -> None:
        store["grad"] = grad.detach()

    def forward_hook(_module, _inputs, output):
        if threading.get_ident() != owner or not torch.is_grad_enabled():
            return None
        store["act"] = output
        output.register_hook(grad_hook)
        return None

    handle = layer.register_forward_hook(forward_hook)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            codes = net(x)                                        # (1, bits) relaxed
            score = (codes * target.detach()).sum()
            if "act" not in store:
                raise RuntimeError("the feature layer's hook did not fire")
            (direct,) = torch.autograd.grad(score, store["act"])
    finally:
        handle.remove()
    acts = store["act"].detach()[0].float()                       # (C, h, w)
    grads = store.get("grad", direct.detach())[0].float()
    if method == "gradcam":
        weights = grads.mean(dim=(1, 2))
    elif method == "gradcam++":
        g2, g3 = grads ** 2, grads ** 3
        denom = 2 * g2 + acts.sum(dim=(1, 2), keepdim=True) * g3
        alpha = g2 / torch.where(denom.abs() > _EPS, denom, torch.ones_like(denom))
        weights = (alpha * F.relu(grads)).sum(dim=(1, 2))
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    cam = F.relu((weights[:, None, None] * acts).sum(dim=0))      # (h, w)
    height, width = out_size
    cam = F.interpolate(cam[None, None], size=(height, width), mode="bilinear",
                        align_corners=False)[0, 0].clamp_min(0)
    peak = float(cam.max())
    empty = not peak > _EPS
    heat = np.zeros((height, width), np.float32) if empty else \
        (cam / peak).clamp(0, 1).cpu().numpy().astype(np.float32)
    return heat, float(score.detach()), empty


def similarity(loaded_model: LoadedModel, image_a: Image.Image, image_b: Image.Image,
               device: Union[str, torch.device] = "cpu") -> float:
    """``s(A -> B)``, the score the maps explain (see :func:`_target`), no grads."""
    net = loaded_model.net.eval()
    x = _model_input(loaded_model, device)([image_a, image_b])
    with torch.inference_mode():
        ca, cb = net(x)
    return float((ca * _target(net, cb)).sum())


def similarities(loaded_model: LoadedModel, images_a, image_b: Image.Image,
                 device: Union[str, torch.device] = "cpu") -> np.ndarray:
    """Batch of ``s(A_i -> B)`` (used by the deletion checks)."""
    net = loaded_model.net.eval()
    model_input = _model_input(loaded_model, device)
    xa, xb = model_input(images_a), model_input([image_b])
    with torch.inference_mode():
        target = _target(net, net(xb))
        ca = net(xa)
    return (ca * target).sum(dim=1).cpu().numpy()


def explain_pair(loaded_model: LoadedModel, image_a: Image.Image, image_b: Image.Image,
                 method: str = "gradcam",
                 device: Union[str, torch.device] = "cpu") -> PairExplanation:
    """Grad-CAM maps of a pair in both directions (see the module docstring).

    ``map_a`` / ``map_b`` are float32 arrays of ``image_a`` / ``image_b``'s own (H, W), in
    [0, 1]. ``similarity`` is ``s(A -> B)``; ``stats`` holds ``similarity_ba`` (``s(B -> A)``),
    ``hamming`` (between the binary codes; None for a float model), ``distance`` (the
    search's: Hamming, or 1 - cosine for a float model), ``a_empty``/``b_empty`` and
    :func:`map_stats` of
    each map under ``map_a``/``map_b``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    net = loaded_model.net
    net.eval()
    image_a, image_b = _rgb(image_a), _rgb(image_b)
    x = _model_input(loaded_model, device)([image_a, image_b])
    xa, xb = x[0:1], x[1:2]
    with torch.inference_mode(False):
        codes = _codes(net, x)
    map_a, s_ab, empty_a = _cam(net, xa, _target(net, codes[1:2]), method,
                                (image_a.height, image_a.width))
    map_b, s_ba, empty_b = _cam(net, xb, _target(net, codes[0:1]), method,
                                (image_b.height, image_b.width))
    if _is_float(net):  # the search's distance between the two descriptors
        hamming, distance = None, float(1.0 - (codes[0] * codes[1]).sum())
    else:
        hamming = int((_signed(codes[0:1]) != _signed(codes[1:2])).sum())
        distance = float(hamming)
    stats = {"method": method, "similarity_ab": s_ab, "similarity_ba": s_ba,
             "hamming": hamming, "distance": distance, "bits": int(codes.shape[1]),
             "a_empty": empty_a, "b_empty": empty_b,
             "map_a": map_stats(map_a), "map_b": map_stats(map_b)}
    return PairExplanation(map_a=map_a, map_b=map_b, similarity=s_ab, stats=stats)


# ---------------------------------------------------------------- presentation

def map_stats(heatmap: np.ndarray) -> dict:
    """``mean``, ``max``, ``frac_above_0_5`` and the centre of mass ``(x, y)`` as fractions of
    the width and height (``None`` for an all-zero map)."""
    heat = np.asarray(heatmap, dtype=np.float64)
    total = float(heat.sum())
    if total > 0:
        ys, xs = np.indices(heat.shape)
        com = [float((xs * heat).sum() / total / max(1, heat.shape[1] - 1)),
               float((ys * heat).sum() / total / max(1, heat.shape[0] - 1))]
    else:
        com = None
    return {"mean": float(heat.mean()) if heat.size else 0.0,
            "max": float(heat.max()) if heat.size else 0.0,
            "frac_above_0_5": float((heat > 0.5).mean()) if heat.size else 0.0,
            "centre_of_mass": com}


def jet(values: np.ndarray) -> np.ndarray:
    """A jet-like colour map in numpy: ``(...)`` in [0, 1] -> ``(..., 3)`` uint8 RGB
    (dark blue -> blue -> cyan -> yellow -> red -> dark red)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    channel_centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # r, g, b
    rgb = np.clip(1.5 - np.abs(4.0 * v - 4.0 * channel_centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay(image: Image.Image, heatmap: np.ndarray, opacity: float = 0.5) -> Image.Image:
    """``image`` blended with the jet-coloured ``heatmap`` (resized to the image if needed).

    ``opacity`` 0 gives the image, 1 the colour map alone.
    """
    image = _rgb(image)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != (image.height, image.width):
        heat = np.asarray(Image.fromarray(heat, mode="F").resize(image.size, Image.BILINEAR))
    alpha = float(np.clip(opacity, 0.0, 1.0))
    base = np.asarray(image, dtype=np.float32)
    blended = (1.0 - alpha) * base + alpha * jet(heat).astype(np.float32)
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------- sanity checks
# Adebayo et al. 2018 ("Sanity checks for saliency maps": model randomisation) and the deletion
# metric (Petsiuk et al. 2018, RISE). Used by tests/test_explain.py and benchmarks/explain_bench.py.

def randomised_copy(loaded_model: LoadedModel, seed: int = 0) -> LoadedModel:
    """The same architecture and card with freshly initialised weights (eval mode)."""
    from hashview.models.registry import build_model

    card = loaded_model.card
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(card.arch, card.bits, input_size=card.input_size, **card.arch_kwargs)
    return LoadedModel(net.eval(), card, None)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two maps; 0 when either is constant."""
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def delete_pixels(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """``image`` with the ``mask`` pixels set to the image's mean colour."""
    array = np.asarray(_rgb(image)).copy()
    mean = array.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    array[mask] = mean
    return Image.fromarray(array, "RGB")


def deletion_check(loaded_model: LoadedModel, image_a: Image.Image, image_b: Image.Image,
                   heatmap: np.ndarray, fraction: float = 0.2, n_random: int = 5,
                   seed: int = 0, device: Union[str, torch.device] = "cpu") -> dict:
    """Similarity drop ``s(A -> B)`` when the ``fraction`` most highlighted pixels of A are
    deleted (set to A's mean colour) vs. the same number of uniformly random pixels (mean over
    ``n_random`` draws). Ties in the map are broken at random, so an all-zero map behaves like
    the random baseline. Returns ``{"base", "top_drop", "random_drop"}``."""
    image_a = _rgb(image_a)
    heat = np.asarray(heatmap, np.float64)
    n = heat.size
    k = int(round(fraction * n))
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(n), -heat.ravel()))        # by heat desc, random tie-break
    masks = []
    top = np.zeros(n, bool)
    top[order[:k]] = True
    masks.append(top.reshape(heat.shape))
    for _ in range(n_random):
        random = np.zeros(n, bool)
        random[rng.choice(n, size=k, replace=False)] = True
        masks.append(random.reshape(heat.shape))
    images = [image_a] + [delete_pixels(image_a, m) for m in masks]
    scores = similarities(loaded_model, images, image_b, device=device)
    base = float(scores[0])
    return {"base": base, "top_drop": base - float(scores[1]),
            "random_drop": base - float(scores[2:].mean())}


# ---------------------------------------------------------------- inputs and figures

MAX_REGION_SIDE = 4096  # output pixels; a bigger region would take long and mean little


def load_input(spec: str, card) -> Image.Image:
    """An image file, or ``SLIDE@x,y,w,h`` (level-0 pixels) read at the model's tiling.

    A region is read like library tiles are (:func:`hashview.tiling.plan_geometry` with the
    card's ``tile_size``/``target_mpp``, defaults 224 px at 0.5 µm/px): from the pyramid level
    the plan picks, resized (Lanczos) so that one library tile's worth of tissue is ``tile_size``
    px; the model then sees it resized to its input size like any image. Raises ``SourceError``.
    """
    from hashview.errors import SourceError
    from hashview.search.query import parse_image_or_region
    from hashview.slides import open_source
    from hashview.slides.image_source import load_rgb_image
    from hashview.tiling import (DEFAULT_TARGET_MPP, DEFAULT_TILE_SIZE, TilingParams,
                                 plan_geometry)

    try:
        parsed = parse_image_or_region(spec)
    except ValueError as exc:
        raise SourceError(spec, str(exc)) from None
    if not isinstance(parsed, tuple):
        return load_rgb_image(spec)
    path, (x, y, w, h) = parsed
    params = TilingParams(tile_size=getattr(card, "tile_size", None) or DEFAULT_TILE_SIZE,
                          target_mpp=getattr(card, "target_mpp", None) or DEFAULT_TARGET_MPP)
    with open_source(path) as source:
        width, height = source.dimensions
        if x < 0 or y < 0 or x + w > width or y + h > height:
            raise SourceError(path, f"region {x},{y},{w},{h} lies outside the slide "
                                    f"({width}x{height})")
        plan = plan_geometry(source, params)
        scale = plan.tile_size / plan.tile_level0            # output px per level-0 px
        out_w, out_h = max(1, round(w * scale)), max(1, round(h * scale))
        if max(out_w, out_h) > MAX_REGION_SIDE:
            raise SourceError(path, f"region {w}x{h} px is {out_w}x{out_h} px at the model's "
                                    f"resolution; the limit is {MAX_REGION_SIDE}")
        ds = source.level_downsamples[plan.level]
        image = source.read_region((x, y), plan.level,
                                   (max(1, round(w / ds)), max(1, round(h / ds))))
    if image.size != (out_w, out_h):
        image = image.resize((out_w, out_h), Image.Resampling.LANCZOS)
    return _rgb(image)


def side_by_side(query: Image.Image, hit: Image.Image, explanation: PairExplanation,
                 opacity: float = 0.5, panel: int = 256,
                 caption: str = "") -> Image.Image:
    """Query, hit, query overlay, hit overlay (each fitted in ``panel`` px) and a caption strip:
    an image ``4 * panel`` wide."""
    from PIL import ImageDraw

    tiles = [query, hit, overlay(query, explanation.map_a, opacity),
             overlay(hit, explanation.map_b, opacity)]
    names = ["query", "hit", "query: matches hit", "hit: matches query"]
    strip = 16
    footer = 16 if caption else 0
    canvas = Image.new("RGB", (4 * panel, panel + strip + footer), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (image, name) in enumerate(zip(tiles, names)):
        fitted = _rgb(image).copy()
        scale = panel / max(fitted.size)
        fitted = fitted.resize((max(1, round(fitted.width * scale)),
                                max(1, round(fitted.height * scale))), Image.BILINEAR)
        canvas.paste(fitted, (i * panel + (panel - fitted.width) // 2,
                              (panel - fitted.height) // 2))
        draw.text((i * panel + 4, panel + 2), name, fill=(0, 0, 0))
    if caption:
        draw.text((4, panel + strip + 2), caption, fill=(60, 60, 60))
    return canvas
