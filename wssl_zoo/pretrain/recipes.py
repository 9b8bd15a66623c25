"""The papers' pretraining recipes, named ``<method>_<dataset>[_<variant>]``.

The values and their sources live in one place, the provenance tables of :mod:`wssl_zoo.methods`
(``wssl_zoo/methods/<method>.py``: ``RECIPES``, every value with the authors' file and line, and
``RECIPE_DOCS``, the command each recipe reproduces); this module builds the :class:`Recipe`
objects from them. The only recipe that is not the authors' is ``wmse_imagenet`` (W-MSE published
no ImageNet-1k recipe), flagged in its ``notes``. The repositories and commits read are each
method module's ``REPO`` and ``COMMIT``.

A recipe is a frozen dataclass; :func:`resolve_recipe` applies overrides (``--epochs 2``,
``--set loss.w_size=64``) and validates the result.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import json
from dataclasses import dataclass
from typing import Any

from .. import catalogue
from ..losses import LOSSES
from ..methods import OPTIMIZERS, recipe_definitions
from ..registry import METHODS, STEMS  # the one list of methods, of stems

SCHEDULES = ("wmse", "warmup_cosine", "warmup_cosine_epoch")


@dataclass(frozen=True)
class Recipe:
    """A complete pretraining configuration. Batch sizes are global (all GPUs together). No field has a
    default: every value comes from the provenance tables of :mod:`wssl_zoo.methods`."""

    name: str
    method: str
    dataset: str
    source: str
    description: str
    epochs: int
    batch_size: int
    lr: float
    arch: str
    stem: str
    img_size: int
    num_views: int
    multi_crop: bool
    loss: dict
    projector: dict
    optimizer: str
    lr_scaling: str  # "none" or "batch/256": lr * batch_size / 256 (the authors' base_lr)
    weight_decay: float
    exclude_bias_norm_wd: bool
    momentum: float
    schedule: str
    warmup_steps: int
    warmup_epochs: int
    lr_drops: tuple  # W-MSE: epochs before the end at which lr *= drop_gamma
    drop_gamma: float
    ema_momentum: float | None  # INTL_M's momentum encoder (base value of the cosine schedule)
    cov_stop_epoch: int | None  # CW-RGP ImageNet: covariance term off from this epoch
    knn_k: int
    eval_every: int
    # torchvision's zero_init_residual (timm's zero_init_last): the last BN of every residual branch
    # starts at weight 0. The authors set it per method and arch (see wssl_zoo.methods).
    zero_init_residual: bool
    # The authors' training precision: "fp32", or "fp16" (torch.cuda.amp autocast + GradScaler).
    # Ours is `wssl-zoo pretrain --amp` (default none = fp32; `--amp fp16` is the authors' setting).
    authors_precision: str
    notes: str

    @property
    def effective_lr(self) -> float:
        """The peak learning rate the optimiser uses."""
        return self.lr * self.batch_size / 256 if self.lr_scaling == "batch/256" else self.lr

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lr_drops"] = list(self.lr_drops)
        return data

    def relation_problems(self) -> list[str]:
        """Every broken relation between batch size, ``loss.w_size``, ``loss.groups`` and the
        embedding dim D (``projector.out_dim``), each naming the flag or ``--set`` key that fixes it."""
        problems = []
        w_size, groups, dim = self.loss.get("w_size"), self.loss.get("groups"), self.projector.get("out_dim")
        ints = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w_size, dim) if v is not None)
        if w_size is not None and not (isinstance(w_size, int) and not isinstance(w_size, bool) and w_size > 0):
            return [f"loss.w_size={w_size!r} must be a positive integer (--set loss.w_size=...)"]
        if groups is not None and not (isinstance(groups, int) and not isinstance(groups, bool) and groups > 0):
            return [f"loss.groups={groups!r} must be a positive integer (--set loss.groups=...)"]
        if not ints:
            return problems
        if w_size is not None and self.batch_size % w_size:
            problems.append(f"batch_size={self.batch_size} is not a multiple of loss.w_size={w_size} "
                            f"(change --batch-size or --set loss.w_size=...)")
        if self.method == "wmse" and w_size is not None and dim is not None and w_size <= dim:
            problems.append(f"loss.w_size={w_size} must be larger than the embedding dim projector.out_dim={dim}, "
                            f"or the whitening covariance is singular (--set loss.w_size=... or "
                            f"--set projector.out_dim=...)")
        if self.method == "cwrgp" and groups is not None and dim is not None:
            if dim % groups:
                problems.append(f"the embedding dim projector.out_dim={dim} is not divisible by loss.groups={groups} "
                                f"(--set loss.groups=... or --set projector.out_dim=...)")
            elif w_size is not None and dim // groups < w_size:
                problems.append(f"each channel group has projector.out_dim/loss.groups={dim // groups} channels, fewer "
                                f"than loss.w_size={w_size} (--set loss.groups=..., --set loss.w_size=... or "
                                f"--set projector.out_dim=...)")
        return problems

    def validate(self) -> "Recipe":
        """Check every field; ValueError naming the recipe, field and value."""
        where = f"recipe {self.name!r}"

        def bad(key: str, why: str):
            raise ValueError(f"{where}: {key}={getattr(self, key)!r} {why}")

        if self.method not in METHODS:
            bad("method", f"is not one of {METHODS}")
        if self.dataset not in catalogue.names():
            bad("dataset", f"is not one of {catalogue.names()}")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"is not one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"is not one of {SCHEDULES}")
        if self.stem not in STEMS:
            bad("stem", f"is not one of {STEMS}")
        if self.lr_scaling not in ("none", "batch/256"):
            bad("lr_scaling", "must be 'none' or 'batch/256'")
        for key in ("epochs", "batch_size", "img_size", "num_views", "knn_k", "eval_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(key, "must be a positive integer")
        if self.num_views < 2:
            bad("num_views", "must be at least 2")
        if not self.lr > 0:
            bad("lr", "must be > 0")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if self.warmup_steps < 0 or self.warmup_epochs < 0:
            raise ValueError(f"{where}: warmup_steps and warmup_epochs must be >= 0")
        if self.ema_momentum is not None:
            if self.method != "intl":
                bad("ema_momentum", "is only defined for INTL (INTL_M)")
            if not 0 < self.ema_momentum < 1:
                bad("ema_momentum", "must be in (0, 1)")
            if not self.loss.get("momentum", False):
                raise ValueError(f"{where}: ema_momentum needs loss.momentum=true (INTL_M)")
        if self.multi_crop and self.method != "intl":
            bad("multi_crop", "is only defined for INTL")
        if self.authors_precision not in ("fp32", "fp16"):
            bad("authors_precision", "must be 'fp32' or 'fp16'")
        if self.cov_stop_epoch is not None and self.method != "cwrgp":
            bad("cov_stop_epoch", "is only defined for CW-RGP")
        for key in ("hidden_dim", "out_dim", "num_layers"):
            value = self.projector.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: projector.{key}={value!r} must be a positive integer")

        accepted = set(inspect.signature(LOSSES[self.method]).parameters)
        unknown = set(self.loss) - accepted
        if unknown:
            raise ValueError(
                f"{where}: loss keys {sorted(unknown)} are not parameters of "
                f"{LOSSES[self.method].__name__} (accepted: {sorted(accepted)})"
            )
        problems = self.relation_problems()
        if problems:
            raise ValueError(f"{where}: " + "; ".join(problems))
        return self


def _build_recipes() -> dict[str, Recipe]:
    """Every recipe, from the provenance tables of :mod:`wssl_zoo.methods` (values and their sources,
    the documentation fields): this module holds none of the values."""
    recipes = {}
    for name, (table, docs) in recipe_definitions().items():
        values: dict[str, Any] = {"loss": {}, "projector": {}}
        for key, fact in table.items():
            group, _, sub = key.partition(".")
            if sub:
                values[group][sub] = fact.value
            else:
                values[key] = fact.value
        recipes[name] = Recipe(name=name, **docs, **values).validate()
    return recipes


RECIPES: dict[str, Recipe] = _build_recipes()


def list_recipes() -> list[Recipe]:
    return [RECIPES[name] for name in sorted(RECIPES)]


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; a KeyError-like ValueError lists the closest names."""
    try:
        return RECIPES[name]
    except KeyError:
        close = difflib.get_close_matches(name, RECIPES, n=5, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown recipe {name!r}{hint} (`wssl-zoo pretrain --list-recipes` shows all {len(RECIPES)})"
        ) from None


def _coerce(current: Any, text: Any, key: str) -> Any:
    """Convert an override given as text to the type of the field's current value."""
    if not isinstance(text, str):
        return text
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"override {key}={text!r}: expected true or false")
    try:
        if isinstance(current, int) and not isinstance(current, bool):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple):
            return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"override {key}={text!r}: expected a {type(current).__name__}") from None
    if current is None:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def resolve_recipe(base: Recipe | str, overrides: dict[str, Any] | None = None) -> Recipe:
    """Apply ``overrides`` ({"epochs": 2, "loss.w_size": "64", ...}) to a recipe and validate it.

    Dotted keys address the ``loss`` and ``projector`` tables. Unknown keys raise ValueError
    naming the key and the valid ones.
    """
    recipe = get_recipe(base) if isinstance(base, str) else base
    if not overrides:
        return recipe.validate()
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    changes: dict[str, Any] = {}
    tables = {"loss": copy.deepcopy(recipe.loss), "projector": copy.deepcopy(recipe.projector)}
    for key, value in overrides.items():
        if "." in key:
            table, sub = key.split(".", 1)
            if table not in tables:
                raise ValueError(f"unknown override {key!r}: only loss.* and projector.* are tables")
            current = tables[table].get(sub)
            if current is None:
                # a parameter the recipe leaves at the loss default: parse JSON scalars
                try:
                    value = json.loads(value) if isinstance(value, str) else value
                except json.JSONDecodeError:
                    pass
                tables[table][sub] = value
            else:
                tables[table][sub] = _coerce(current, value, key)
            changes[table] = tables[table]
            continue
        if key not in fields or key == "name":
            close = difflib.get_close_matches(key, fields, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown recipe field {key!r}{hint}")
        changes[key] = _coerce(getattr(recipe, key), value, key)
    return dataclasses.replace(recipe, **changes).validate()


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Rebuild a recipe from :meth:`Recipe.to_dict` output (a saved run config). A config saved before a
    field existed takes that field from its named recipe's table (nowhere else holds a value)."""
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"unknown recipe keys {sorted(unknown)} in config")
    missing = fields - set(data)
    if missing:
        base = RECIPES.get(str(data.get("name")))
        if base is None:
            raise ValueError(f"the config's recipe {data.get('name')!r} lacks {sorted(missing)} and is not a recipe "
                             "that could give them")
        data = {**{k: v for k, v in base.to_dict().items() if k in missing}, **data}
    data = dict(data)
    if "lr_drops" in data:
        data["lr_drops"] = tuple(data["lr_drops"])
    return Recipe(**data).validate()
