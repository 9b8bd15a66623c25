"""Pretraining engine: the papers' recipes, optimisers, schedules, checkpoints and the loop.

``python -m wssl_zoo.pretrain --help`` (or ``wssl-zoo pretrain``) runs it from the shell;
:func:`wssl_zoo.pretrain.loop.pretrain` from Python.

Modules: :mod:`.recipes` (the papers' configurations), :mod:`.schedules` (step-wise lr, EMA-momentum and
covariance-weight schedules), :mod:`.checkpoint` (resumable train state, RNG state; files are
written with :mod:`wssl_zoo.fileio`). Their public names are re-exported here; the modules load on first use of a name.
"""

from importlib import import_module

from .recipes import RECIPES, Recipe, get_recipe, list_recipes, resolve_recipe

_LAZY = {
    "schedules": ("WarmupCosine", "WarmupCosineEpoch", "WarmupStep", "WMSESchedule", "apply_lr",
                  "build_schedule", "cov_weight_at", "momentum_at"),
    "checkpoint": ("TrainState", "atomic_save", "capture_rng_state", "is_finite_state", "load_checkpoint",
                   "restore_rng_state", "save_checkpoint"),
}
_OWNER = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    module = _OWNER.get(name)
    if module is None:
        raise AttributeError(f"module 'wssl_zoo.pretrain' has no attribute {name!r}")

    return getattr(import_module(f".{module}", __name__), name)


__all__ = ["RECIPES", "Recipe", "get_recipe", "list_recipes", "resolve_recipe", *_OWNER]
