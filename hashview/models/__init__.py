"""Hashing networks, their registry, model cards and model files.

See docs/models.md for the architecture choices and docs/architecture.md for the contract.
"""

from hashview.models.base import HashingNet
from hashview.models.cards import ModelCard
from hashview.models.registry import available_architectures, build_model, register
from hashview.models.store import (DEFAULT_MODEL, LoadedModel, bundled_models_dirs,
                                   install_model, list_models, load_model, save_model,
                                   user_models_dir)

__all__ = [
    "DEFAULT_MODEL", "HashingNet", "LoadedModel", "ModelCard", "available_architectures",
    "build_model", "bundled_models_dirs", "install_model", "list_models", "load_model",
    "register", "save_model", "user_models_dir",
]
