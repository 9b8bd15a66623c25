"""Pretraining engine: the papers' recipes, optimisers, schedules, checkpoints and the loop.

``python -m wssl_zoo.pretrain --help`` (or ``wssl-zoo pretrain``) runs it from the shell;
:func:`wssl_zoo.pretrain.loop.pretrain` from Python.
"""

from .recipes import RECIPES, Recipe, get_recipe, list_recipes, resolve_recipe

__all__ = ["RECIPES", "Recipe", "get_recipe", "list_recipes", "resolve_recipe"]
