"""Saving, finding and loading models: ``NAME.safetensors`` (weights) + ``NAME.json`` (card).

Weights are read only through safetensors (never pickle), after checking their SHA-256 against
the card. Models are looked up by name in the bundled directory (``resources/models`` of a source
checkout, or ``hashview/_resources/models`` in an installed copy: ``hashview.resources``) and then
in the user directory (``$HASHVIEW_HOME/models``, else ``$XDG_DATA_HOME/hashview/models``, else
``~/.local/share/hashview/models``).

``DEFAULT_MODEL`` is the bundled model the app and the CLI use unless told otherwise: the one
that measured best on the Kather subset (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from hashview import __version__
from hashview.devices import pick_device
from hashview.errors import ModelError, printable
from hashview.models.base import HashingNet
from hashview.models.card_limits import PLAIN_NAME_RULE, is_int, is_plain_name, shown
from hashview.models.cards import ModelCard
from hashview.models.registry import build_model
from hashview.fileio import atomic_write_bytes, open_regular_file, user_data_dir
from hashview.resources import find_dir as find_resource_dir

DEFAULT_MODEL = "mth-64-general"  # chosen on generalisation: docs/models.md "Default model"
WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".tar")
# A card can come from anyone: the net it describes may hold at most this many values (400 MB
# in fp32; the shipped models hold under 5 million), and its weights file at most 4 bytes a value
# plus the header (tensor names, shapes, offsets: about 100 bytes a tensor), checked before the
# file is read at all.
MAX_PARAMETERS = 100_000_000
HEADER_SLACK_BYTES = 64 * 1024
HEADER_BYTES_PER_TENSOR = 1024
HASH_BLOCK_BYTES = 2**20

PathLike = Union[str, os.PathLike]


@dataclass
class LoadedModel:
    net: HashingNet  # in eval mode, fp32
    card: ModelCard
    weights_path: Optional[Path] = None  # None for the built-in seeded default model


def bundled_models_dirs() -> list[Path]:
    found = find_resource_dir("models")
    return [found] if found is not None else []


def user_models_dir() -> Path:
    return user_data_dir() / "models"


# ---------------------------------------------------------------- serialisation

def state_dict_bytes(net: HashingNet, fp16: bool = True) -> bytes:
    """Deterministic safetensors bytes of ``net``'s state dict.

    With ``fp16`` the parameters are stored in float16 (half the size; loaded back into fp32);
    buffers (BatchNorm running statistics) stay float32 since they are few and precision-sensitive.
    """
    buffer_names = {name for name, _ in net.named_buffers()}
    tensors = {}
    for name, tensor in net.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if fp16 and tensor.is_floating_point() and name not in buffer_names:
            tensor = tensor.to(torch.float16)
        tensors[name] = tensor.contiguous()
    # A single metadata entry: safetensors writes the metadata map in hash-map order, which
    # varies between calls, so several entries would make the bytes (and sha256) unstable.
    return save_safetensors_bytes(tensors, metadata={"format": "pt"})


def _stem(path: PathLike) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX) else path


def _plain_stem(path: PathLike) -> Path:
    """The model stem of ``path``, whose name (the model's name) must be a plain name."""
    stem = _stem(path)
    if not is_plain_name(stem.name):
        raise ModelError(stem, f"a model name must be a plain name ({PLAIN_NAME_RULE})")
    return stem


def save_model(net: HashingNet, card: ModelCard, path_stem: PathLike,
               fp16: bool = True) -> ModelCard:
    """Write ``STEM.safetensors`` then ``STEM.json`` atomically; return the card as written.

    The written card takes ``name`` from the file stem (so name look-ups find it), the
    architecture fields from ``net``, and ``sha256`` of the weights file bytes.
    """
    stem = _plain_stem(path_stem)
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        data = state_dict_bytes(net, fp16=fp16)
        card = dataclasses.replace(
            card, name=stem.name, arch=net.arch, bits=net.bits, input_size=net.input_size,
            code_kind=getattr(net, "code_kind", "binary"),
            arch_kwargs=net.arch_kwargs(), sha256=hashlib.sha256(data).hexdigest(),
            created=card.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            hashview_version=__version__, source=str(_files(stem)[0]))
        card.validate(stem)  # never write a card that reading would refuse
        card_path, weights_path = _files(stem)
        atomic_write_bytes(weights_path, data)
        atomic_write_bytes(card_path, card.to_json().encode("utf-8"))
    except OSError as exc:
        raise ModelError(stem, f"cannot save model ({exc.strerror or exc})") from exc
    return card


# ---------------------------------------------------------------- loading

def _tensor_layout_problem(found: dict[str, tuple], expected: dict[str, tuple]) -> Optional[str]:
    """How a file's tensors (name -> shape) differ from the net's, or None."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensor(s) (e.g. {shown(missing[0])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s) (e.g. {shown(unexpected[0])})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} shape mismatch(es) (e.g. {k}: file {shown(found[k])} vs "
                     f"model {expected[k]})")
    return "; ".join(parts) or None


def _header_shapes(data: bytes, weights_path: PathLike) -> dict[str, tuple]:
    """Tensor name -> shape from a safetensors header (8-byte little-endian length, then JSON),
    read without touching the tensor data."""
    def bad(reason: str) -> ModelError:
        return ModelError(weights_path, f"not a valid safetensors file ({reason})")

    if len(data) < 8:
        raise bad("shorter than its header")
    length = int.from_bytes(data[:8], "little")
    if length > len(data) - 8:
        raise bad(f"header of {length:,} bytes in a {len(data):,}-byte file")
    try:
        header = json.loads(data[8:8 + length])
    except (ValueError, RecursionError):
        raise bad("header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
            raise bad(f"tensor {shown(name)} has no valid shape")
        shapes[name] = tuple(shape)
    return shapes


def _load_state_into(net: HashingNet, data: bytes, weights_path: PathLike) -> None:
    try:
        state = load_safetensors_bytes(data)
        # load_state_dict copies into the fp32 parameters, so fp16 storage is upcast here.
        net.load_state_dict(state, strict=True)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelError(weights_path, f"not a valid safetensors file ({exc})") from exc


def _build_for_card(card: ModelCard, where: PathLike, device: Optional[str] = None) -> HashingNet:
    """The card's net; on the "meta" device it has every tensor's shape but allocates nothing."""
    try:
        # The random init is overwritten by the weights; fork_rng keeps it from advancing
        # the caller's RNG (loading a model must not change a seeded experiment).
        with torch.random.fork_rng(devices=[]), (
                torch.device(device) if device else contextlib.nullcontext()):
            return build_model(card.arch, card.bits, input_size=card.input_size,
                               **card.arch_kwargs)
    except ModelError as exc:
        raise ModelError(where, exc.reason) from exc


def _files(stem: Path) -> tuple[Path, Path]:
    """(card, weights) paths of a model stem; appends suffixes so dotted names survive."""
    return stem.with_name(stem.name + CARD_SUFFIX), stem.with_name(stem.name + WEIGHTS_SUFFIX)


def _expected_tensors(card: ModelCard, card_path: Path) -> tuple[dict[str, tuple], int]:
    """(name -> shape of the card's net, the most bytes its weights file may hold), from a net
    built on the meta device, so a card asking for a huge net costs nothing."""
    template = _build_for_card(card, card_path, device="meta")
    state = template.state_dict()
    parameters = sum(t.numel() for t in state.values())
    if parameters > MAX_PARAMETERS:
        raise ModelError(card_path, f"a {card.arch}-{card.bits} of this card has {parameters:,} "
                                    f"parameters, more than the {MAX_PARAMETERS:,} HashView loads")
    # At most 4 bytes a value (fp32; 8 for int64 counters) plus the header's JSON.
    limit = sum(t.numel() * max(4, t.element_size()) for t in state.values())
    limit += HEADER_SLACK_BYTES + HEADER_BYTES_PER_TENSOR * len(state)
    return {name: tuple(t.shape) for name, t in state.items()}, limit


def _read_verified_weights(weights_path: Path, card: ModelCard, card_path: Path,
                           limit: int) -> bytes:
    """The weights file's bytes once their SHA-256 matches the card's.

    The size is checked against ``limit`` before anything is read, and the file is hashed as it
    is read (1 MiB blocks), so memory never exceeds the bound. The bytes hashed are the bytes
    returned, so the file cannot change between check and use.
    """
    if not card.sha256:
        raise ModelError(card_path, "model card has no sha256; cannot verify the weights")
    digest = hashlib.sha256()
    blocks = []
    try:
        with open_regular_file(weights_path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise ModelError(weights_path, f"weights file of {size:,} bytes is larger than "
                                               f"the {limit:,} bytes its card's net can hold")
            read = 0
            while block := f.read(min(HASH_BLOCK_BYTES, limit + 1 - read)):
                digest.update(block)
                blocks.append(block)
                read += len(block)
                if read > limit:  # grew while being read
                    raise ModelError(weights_path, "weights file grew while being read")
    except OSError as exc:
        raise ModelError(weights_path, f"cannot read weights ({exc.strerror or exc})") from exc
    if digest.hexdigest() != card.sha256.lower():
        raise ModelError(weights_path, f"SHA-256 mismatch with its card {card_path.name} "
                         f"(file {digest.hexdigest()[:12]}..., card {card.sha256[:12]}...): "
                         "corrupt or modified")
    data = b"".join(blocks)
    blocks.clear()
    return data


def _read_checked(stem: Path) -> tuple[ModelCard, bytes]:
    """A model's card and verified weight bytes: the card's fields in range, the file within the
    size its net allows, its SHA-256 the card's, its tensors the net's (names and shapes, from
    the header, before any tensor is made: a card that lies about its sizes is refused rather
    than half-loaded)."""
    card_path, weights_path = _files(stem)
    if not card_path.exists():
        raise ModelError(card_path, "model card not found (a model is NAME.safetensors + NAME.json)")
    if not weights_path.exists():
        raise ModelError(weights_path, "weights file not found")
    card = ModelCard.read(card_path)
    shapes, limit = _expected_tensors(card, card_path)
    data = _read_verified_weights(weights_path, card, card_path, limit)
    problem = _tensor_layout_problem(_header_shapes(data, weights_path), shapes)
    if problem:
        raise ModelError(weights_path, f"weights do not fit {card.arch}-{card.bits}: {problem}")
    return card, data


def _load_files(stem: Path, source: str) -> LoadedModel:
    card_path, weights_path = _files(stem)
    card, data = _read_checked(stem)
    card.source = source
    net = _build_for_card(card, card_path)
    _load_state_into(net, data, weights_path)
    return LoadedModel(net.eval(), card, weights_path)


def _find_named(name: str) -> Optional[tuple[Path, str]]:
    dirs = [(d, "bundled") for d in bundled_models_dirs()] + [(user_models_dir(), "user")]
    for directory, source in dirs:
        if _files(directory / name)[0].is_file():
            return directory / name, source
    return None


def load_model(name_or_path: PathLike, device: Union[str, torch.device, None] = None) -> LoadedModel:
    """Load a model by name (bundled or user directory) or by a .safetensors / .json path.

    ``device`` None keeps the net on the CPU; "auto", "cpu", "cuda" are resolved by
    :func:`hashview.devices.pick_device`.
    """
    text = os.fspath(name_or_path)
    path = Path(text)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(path, "pickle-based model files are not accepted; use .safetensors")
    path = unfold_model_path(path)
    if path.suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX):
        loaded = _load_files(_stem(path), source=str(path))
    elif os.sep in text or "/" in text or path.is_file():
        if not _files(path)[0].is_file():
            raise ModelError(path, "not a model file (expected NAME.safetensors with NAME.json)")
        loaded = _load_files(path, source=str(path))
    else:
        return load_installed_model(text, device)
    return _to_device(loaded, device)


def unfold_model_path(path: PathLike) -> Path:
    """``path`` itself, or the model in it when it is a training run's output folder."""
    path = Path(path)
    if path.is_dir() and path.suffix not in (WEIGHTS_SUFFIX, CARD_SUFFIX):
        return model_in_folder(path)
    return path


def model_in_folder(folder: PathLike) -> Path:
    """The weights file of the one model (``NAME.safetensors`` with ``NAME.json``) directly in
    ``folder``, as ``hashview train --out`` leaves it; a one-line ModelError naming the folder
    when it holds none or several (checkpoints and the held-out run's subfolder are not
    models)."""
    folder = Path(folder)
    found = sorted(p for p in folder.glob("*" + WEIGHTS_SUFFIX)
                   if p.stem != "checkpoint" and p.with_suffix(CARD_SUFFIX).is_file())
    if not found:
        raise ModelError(folder, "no model in this folder (expected NAME.safetensors with "
                                 "NAME.json, as 'hashview train --out' writes them)")
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise ModelError(folder, f"{len(found)} models in this folder ({names}): name one file")
    return found[0]


def rewrite_card(model_path: PathLike, **changes) -> ModelCard:
    """Replace fields of a saved model's card (weights untouched, so its sha256 still holds);
    the weights are verified first and the new card validated before it is written."""
    stem = _plain_stem(model_path)
    card, _ = _read_checked(stem)
    card = dataclasses.replace(card, **changes)
    card.validate(stem)
    try:
        atomic_write_bytes(_files(stem)[0], card.to_json().encode("utf-8"))
    except OSError as exc:
        raise ModelError(stem, f"cannot save model card ({exc.strerror or exc})") from exc
    return card


def is_plain_model_name(name: object) -> bool:
    """True for a name that can only mean a file in a models directory: no path separator,
    drive, ``.``/``..``, control character, and at most 255 characters."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and name not in (".", "..")
            and name.isprintable() and not any(c in name for c in "/\\:"))


def load_installed_model(name: str,
                         device: Union[str, torch.device, None] = None) -> LoadedModel:
    """Load a bundled or user model by its name only, never from a path: for names read from
    files (a library's ``model_name``), which must not make HashView load files they point at.
    """
    if not is_plain_model_name(name):
        raise ModelError(None, f"{printable(repr(name))[:120]} is not a model name (models "
                               "named by a library are looked up among installed models)")
    found = _find_named(name)
    if found is None:
        names = ", ".join(sorted({c.name for c in list_models()})) or "none"
        raise ModelError(None, f"unknown model {name!r} (available: {names})")
    return _to_device(_load_files(*found), device)


def _to_device(loaded: LoadedModel, device: Union[str, torch.device, None]) -> LoadedModel:
    if device is not None:
        loaded.net.to(pick_device(device))
    return loaded


def list_models() -> list[ModelCard]:
    """Cards of all bundled and user models (bundled first; unreadable cards are skipped)."""
    cards: dict[str, ModelCard] = {}
    dirs = [(d, "bundled") for d in bundled_models_dirs()] + [(user_models_dir(), "user")]
    for directory, source in dirs:
        if not directory.is_dir():
            continue
        for card_path in sorted(directory.glob("*" + CARD_SUFFIX)):
            if (card_path.stem in cards or not is_plain_name(card_path.stem)
                    or not _files(card_path.with_suffix(""))[1].is_file()):
                continue
            try:
                card = ModelCard.read(card_path)
            except ModelError:
                continue
            card.name, card.source = card_path.stem, source
            cards[card.name] = card
    return list(cards.values())


def unbundled_name(name: str) -> str:
    """``name``, or ``name-own`` when a bundled model has that name: a model trained here must
    not take a bundled model's name (the bundled one would hide it once installed)."""
    taken = any(_files(directory / name)[0].is_file() for directory in bundled_models_dirs())
    return f"{name}-own" if taken else name


def install_model(model_path: PathLike) -> ModelCard:
    """Copy a saved model (``NAME.safetensors`` + ``NAME.json``, or a training run's folder
    holding one) into :func:`user_models_dir`, so that it is listed and loadable by name. An
    installed model of the same name is replaced; a bundled model's name is refused (the
    bundled model would hide it, and libraries made with the bundled one would stop working).

    The weights are written before the card, so a half-installed model is never listed.
    """
    stem = _plain_stem(unfold_model_path(model_path))
    if unbundled_name(stem.name) != stem.name:
        raise ModelError(stem, f"a bundled model is named {stem.name}: rename the model's "
                               f".safetensors and .json files to install it")
    card, data = _read_checked(stem)
    target_card, target_weights = _files(user_models_dir() / stem.name)
    try:
        target_card.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target_weights, data)
        # The card as read and checked (not the file again, which may have changed since).
        atomic_write_bytes(target_card, card.to_json().encode("utf-8"))
    except OSError as exc:
        raise ModelError(stem, f"cannot install model ({exc.strerror or exc})") from exc
    card.source = "user"
    return card
