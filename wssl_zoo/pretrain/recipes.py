"""The papers' pretraining recipes, named ``<method>_<dataset>[_<variant>]``.

Every value comes from the authors' scripts and configs at the commits below (cited per recipe
in ``source``); the only recipe that is not the authors' is ``wmse_imagenet`` (W-MSE published no
ImageNet-1k recipe), flagged in its ``notes``.

- W-MSE: https://github.com/htdt/self-supervised @ d9662c8 (README commands, cfg.py, train.py)
- CW-RGP: https://github.com/winci-ai/CW-RGP @ 5bbf6ed (scripts/base.sh, scripts/ImageNet.sh,
  base/cfg.py, ImageNet/cfg.py, ImageNet/train.py)
- INTL: https://github.com/winci-ai/INTL @ 0aa69af (scripts/*.sh, cfg.py, cifar/cfg.py, main.py)

A recipe is a frozen dataclass; :func:`resolve_recipe` applies overrides (``--epochs 2``,
``--set loss.w_size=64``) and validates the result.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from typing import Any

WMSE_SRC = "https://github.com/htdt/self-supervised @ d9662c8d07dafd194a9045375f4f6aa09f5b03e9"
CWRGP_SRC = "https://github.com/winci-ai/CW-RGP @ 5bbf6ed4df355d151fe278e87ad51dd2bff89a14"
INTL_SRC = "https://github.com/winci-ai/INTL @ 0aa69af20a263d1d714e45bc835925a84dc11956"

from ..registry import METHODS  # noqa: E402  (the one list of methods)
DATASETS = ("cifar10", "cifar100", "stl10", "tiny_imagenet", "imagenet100", "imagenet", "imagefolder", "fashion_mnist")
OPTIMIZERS = ("adam", "sgd", "lars")
SCHEDULES = ("wmse", "warmup_cosine", "warmup_cosine_epoch")
from ..registry import STEMS  # noqa: E402  (the one list of stems)


@dataclass(frozen=True)
class Recipe:
    """A complete pretraining configuration. Batch sizes are global (all GPUs together)."""

    name: str
    method: str
    dataset: str
    source: str
    description: str
    epochs: int
    batch_size: int
    lr: float
    arch: str = "resnet18"
    stem: str = "cifar"
    img_size: int = 32
    num_views: int = 2
    multi_crop: bool = False
    loss: dict = field(default_factory=dict)
    projector: dict = field(default_factory=dict)
    optimizer: str = "adam"
    lr_scaling: str = "none"  # "none" or "batch/256": lr * batch_size / 256 (the authors' base_lr)
    weight_decay: float = 0.0
    exclude_bias_norm_wd: bool = False
    momentum: float = 0.9
    schedule: str = "wmse"
    warmup_steps: int = 0
    warmup_epochs: int = 0
    lr_drops: tuple = ()  # W-MSE: epochs before the end at which lr *= drop_gamma
    drop_gamma: float = 0.2
    ema_momentum: float | None = None  # INTL_M's momentum encoder (base value of the cosine schedule)
    cov_stop_epoch: int | None = None  # CW-RGP ImageNet: covariance term off from this epoch
    knn_k: int = 5
    eval_every: int = 5
    # torchvision's zero_init_residual (timm's zero_init_last): the last BN of every residual branch
    # starts at weight 0. The authors set it per method and arch (see wssl_zoo.methods).
    zero_init_residual: bool = False
    # The authors' training precision: "fp32", or "fp16" (torch.cuda.amp autocast + GradScaler).
    # Ours is `wssl-zoo pretrain --amp` (default none = fp32; `--amp fp16` is the authors' setting).
    authors_precision: str = "fp32"
    notes: str = ""

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
        if self.dataset not in DATASETS:
            bad("dataset", f"is not one of {DATASETS}")
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
        from ..losses import LOSSES  # the loss kwargs must be accepted by the loss class

        import inspect

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


def _wmse(name, dataset, views, batch, epochs, lr, emb, w_size, w_iter=1, img=32, stem="cifar",
          arch="resnet18", command="", notes=""):
    return Recipe(
        name=name, method="wmse", dataset=dataset,
        source=f"{WMSE_SRC}: README.md `python -m train {command}`; cfg.py defaults",
        description=f"W-MSE {views} on {dataset}", epochs=epochs, batch_size=batch, lr=lr,
        arch=arch, stem=stem, img_size=img, num_views=views,
        loss=dict(w_size=w_size, w_iter=w_iter, eps=0.0, normalize=True),
        projector=dict(hidden_dim=1024, out_dim=emb, num_layers=2, hidden_bias=True, last_bias=True),
        optimizer="adam", weight_decay=1e-6, schedule="wmse", warmup_steps=500,
        lr_drops=(50, 25), drop_gamma=0.2, knn_k=5, eval_every=20, notes=notes,
    )


def _cwrgp(name, dataset, views, batch, epochs, lr, emb, w_size, groups, w_iter=1, head=1024,
           img=32, stem="cifar", command=""):
    return Recipe(
        name=name, method="cwrgp", dataset=dataset,
        source=f"{CWRGP_SRC}: scripts/base.sh `python base/train.py {command}`; base/cfg.py defaults",
        description=f"CW-RGP {views} on {dataset}", epochs=epochs, batch_size=batch, lr=lr,
        stem=stem, img_size=img, num_views=views,
        loss=dict(w_size=w_size, w_iter=w_iter, groups=groups, random_groups=True, eps=0.0),
        projector=dict(hidden_dim=head, out_dim=emb, num_layers=2, hidden_bias=True, last_bias=True),
        optimizer="adam", weight_decay=1e-6, schedule="wmse", warmup_steps=500,
        lr_drops=(50, 25), drop_gamma=0.2, knn_k=5, eval_every=10,
        zero_init_residual=True,  # base/model.py:21 models.<arch>(zero_init_residual=True)
    )


def _build_recipes() -> dict[str, Recipe]:
    r: list[Recipe] = []
    # ---------------------------------------------------------------- W-MSE (README "table 1")
    for ds in ("cifar10", "cifar100"):
        r.append(_wmse(f"wmse_{ds}", ds, 4, 256, 1000, 3e-3, 64, 128,
                       command=f"--dataset {ds} --epoch 1000 --lr 3e-3 --num_samples 4 --bs 256 --emb 64 --w_size 128"))
        r.append(_wmse(f"wmse_{ds}_2views", ds, 2, 512, 1000, 3e-3, 64, 128,
                       command=f"--dataset {ds} --epoch 1000 --lr 3e-3 --emb 64 --w_size 128"))
    # datasets/stl10.py:22 and datasets/tiny_in.py:16: aug_transform(64, ...) for both
    for ds, epochs, img in (("stl10", 2000, 64), ("tiny_imagenet", 1000, 64)):
        tag = "tiny_in" if ds == "tiny_imagenet" else ds
        r.append(_wmse(f"wmse_{ds}", ds, 4, 256, epochs, 2e-3, 128, 256, img=img, stem="small",
                       command=f"--dataset {tag} --epoch {epochs} --lr 2e-3 --num_samples 4 --bs 256 --emb 128 --w_size 256"))
        r.append(_wmse(f"wmse_{ds}_2views", ds, 2, 512, epochs, 2e-3, 128, 256, w_iter=4, img=img, stem="small",
                       command=f"--dataset {tag} --epoch {epochs} --lr 2e-3 --emb 128 --w_size 256 --w_iter 4"))
    in100 = "--crop_s0 0.08 --cj0 0.8 --cj1 0.8 --cj2 0.8 --cj3 0.2 --gs_p 0.2"
    r.append(_wmse("wmse_imagenet100", "imagenet100", 4, 256, 240, 2e-3, 128, 256, img=224, stem="imagenet",
                   command=f"--dataset imagenet --epoch 240 --lr 2e-3 --num_samples 4 --bs 256 --emb 128 --w_size 256 {in100}"))
    r.append(_wmse("wmse_imagenet100_2views", "imagenet100", 2, 512, 240, 2e-3, 128, 256, img=224, stem="imagenet",
                   command=f"--dataset imagenet --epoch 240 --lr 2e-3 --emb 128 --w_size 256 {in100}"))
    r.append(_wmse("wmse_imagenet", "imagenet", 4, 256, 240, 2e-3, 128, 256, img=224, stem="imagenet", arch="resnet50",
                   command=f"--dataset imagenet --epoch 240 --lr 2e-3 --num_samples 4 --bs 256 --emb 128 --w_size 256 {in100}",
                   notes="Not the authors' recipe: W-MSE published no ImageNet-1k recipe; this is its ImageNet-100 "
                         "recipe (W-MSE 4) with a ResNet-50 backbone."))
    # ---------------------------------------------------------------- CW-RGP (scripts/base.sh)
    for ds in ("cifar10", "cifar100"):
        r.append(_cwrgp(f"cwrgp_{ds}", ds, 4, 256, 1000, 3e-3, 512, 64, 4,
                        command=f"--dataset {ds} --epochs 1000 --lr 3e-3 --num_samples 4 --bs 256 --w_size 64 --group 4"))
    r.append(_cwrgp("cwrgp_cifar10_2views", "cifar10", 2, 256, 1000, 3e-3, 512, 64, 4, w_iter=4,
                    command="--dataset cifar10 --epochs 1000 --lr 3e-3 --bs 256 --w_size 64 --group 4 --w_iter 4"))
    r.append(_cwrgp("cwrgp_cifar100_2views", "cifar100", 2, 512, 1000, 3e-3, 512, 64, 4,
                    command="--dataset cifar100 --epochs 1000 --lr 3e-3 --w_size 64 --group 4"))
    # base/datasets/stl10.py: aug_transform(64, ...) (W-MSE's), test Resize(70, bicubic) + CenterCrop(64)
    r.append(_cwrgp("cwrgp_stl10", "stl10", 4, 256, 2000, 2e-3, 512, 64, 4, img=64, stem="small",
                    command="--dataset stl10 --epochs 2000 --lr 2e-3 --num_samples 4 --bs 256 --w_size 64 --group 4"))
    r.append(_cwrgp("cwrgp_stl10_2views", "stl10", 2, 512, 2000, 2e-3, 512, 64, 4, img=64, stem="small",
                    command="--dataset stl10 --epochs 2000 --lr 2e-3 --w_size 64 --group 4"))
    r.append(_cwrgp("cwrgp_tiny_imagenet", "tiny_imagenet", 4, 256, 1000, 2e-3, 1024, 128, 2, head=2048, img=64, stem="small",
                    command="--dataset tiny_in --epochs 1000 --lr 2e-3 --num_samples 4 --bs 256 --emb 1024 --w_size 128 --group 2 --head_size 2048"))
    r.append(_cwrgp("cwrgp_tiny_imagenet_2views", "tiny_imagenet", 2, 512, 1000, 2e-3, 1024, 128, 2, head=2048, img=64, stem="small",
                    command="--dataset tiny_in --epochs 1000 --lr 2e-3 --emb 1024 --w_size 128 --group 2 --head_size 2048"))
    # ---------------------------------------------------------------- CW-RGP ImageNet (scripts/ImageNet.sh)
    for name, epochs, cov_w, cov_stop in (("cwrgp_imagenet", 200, 0.01, 100), ("cwrgp_imagenet_100ep", 100, 0.005, 50)):
        r.append(Recipe(
            name=name, method="cwrgp", dataset="imagenet",
            source=f"{CWRGP_SRC}: scripts/ImageNet.sh (CW-RGP 4, {epochs} epochs, --cov_w {cov_w} --cov_stop {cov_stop}); "
                   "ImageNet/cfg.py defaults; ImageNet/train.py (SGD, warm-up, cosine per epoch)",
            description=f"CW-RGP 4 on ImageNet-1k, {epochs} epochs, covariance term until epoch {cov_stop}",
            epochs=epochs, batch_size=512, lr=0.05, arch="resnet50", stem="imagenet", img_size=224, num_views=4,
            # cov_block: ImageNet/methods/cwrgp.py:34-36 compute the covariance term per GPU on its
            # 512 / 4 GPUs = 128 samples (ImageNet/train.py:99); DDP averages it over the GPUs.
            loss=dict(w_size=128, w_iter=1, groups=2, random_groups=True, eps=0.0, cov_weight=cov_w,
                      cov_block=128),
            projector=dict(hidden_dim=2048, out_dim=1024, num_layers=3, hidden_bias=True, last_bias=True),
            optimizer="sgd", lr_scaling="batch/256", weight_decay=1e-4, exclude_bias_norm_wd=False,
            schedule="warmup_cosine_epoch", warmup_steps=500, cov_stop_epoch=cov_stop, knn_k=5, eval_every=10,
            zero_init_residual=True,  # ImageNet/model.py:21 models.<arch>(zero_init_residual=True)
        ))
    # ---------------------------------------------------------------- INTL
    for ds in ("cifar10", "cifar100"):
        r.append(Recipe(
            name=f"intl_{ds}", method="intl", dataset=ds,
            source=f"{INTL_SRC}: scripts/{ds}.sh `python cifar/main.py --dataset {ds} --arch resnet18 "
                   "--projection_size 2048 --epochs 1000 --lr 0.3 --wd 1e-4 --method intl`; cifar/cfg.py defaults",
            description=f"INTL on {ds}", epochs=1000, batch_size=256, lr=0.3, img_size=32,
            # INTL's ResNet pads by 1 before the 3x3/1 padding-1 CIFAR conv (src/resnet.py:156,276 +
            # src/model.py:24): the authors' quirk, reproduced; --set stem=cifar is the corrected stem.
            stem="cifar_pad2",
            loss=dict(iterations=4, momentum=False),
            projector=dict(hidden_dim=2048, out_dim=2048, num_layers=3, hidden_bias=False, last_bias=True),
            optimizer="sgd", lr_scaling="batch/256", weight_decay=1e-4, exclude_bias_norm_wd=False,
            schedule="warmup_cosine", warmup_epochs=2, knn_k=5, eval_every=5,
            zero_init_residual=False,  # src/model.py:18-22: zero_init only when arch != resnet18
            authors_precision="fp32",  # cifar/main.py trains without autocast
        ))
    r.append(Recipe(
        name="intl_imagenet100", method="intl", dataset="imagenet100",
        source=f"{INTL_SRC}: scripts/in100.sh `python main.py --dataset in100 --arch resnet18 --bs 128 "
               "--projection_size 4096 --epochs 400 --lr 0.5 --wd 2.5e-5 --method intl`; cfg.py defaults",
        description="INTL on ImageNet-100", epochs=400, batch_size=128, lr=0.5, img_size=224, stem="imagenet",
        loss=dict(iterations=4, momentum=False),
        projector=dict(hidden_dim=4096, out_dim=8192, num_layers=3, hidden_bias=False, last_bias=True),
        optimizer="sgd", lr_scaling="batch/256", weight_decay=2.5e-5, exclude_bias_norm_wd=True,
        schedule="warmup_cosine", warmup_epochs=2, knn_k=5, eval_every=10,
        zero_init_residual=False,  # src/model.py:18-22: zero_init only when arch != resnet18
        authors_precision="fp16",  # main.py:129,174-178 torch.cuda.amp autocast + GradScaler
    ))
    imagenet_common = dict(
        method="intl", dataset="imagenet", batch_size=256, arch="resnet50", stem="imagenet", img_size=224,
        projector=dict(hidden_dim=8192, out_dim=8192, num_layers=3, hidden_bias=False, last_bias=True),
        optimizer="sgd", lr_scaling="batch/256", weight_decay=1e-5, exclude_bias_norm_wd=True,
        schedule="warmup_cosine", warmup_epochs=2, knn_k=5, eval_every=10,
        zero_init_residual=True,  # src/model.py:18-22: resnet50 != resnet18 -> zero_init_residual=True
        authors_precision="fp16",  # main.py:129,174-178 torch.cuda.amp autocast + GradScaler
    )
    r.append(Recipe(
        name="intl_imagenet", source=f"{INTL_SRC}: scripts/ep800.sh `python main.py --dataset imagenet --epochs 800 "
        "--lr 0.3 --method intl`; cfg.py defaults", description="INTL on ImageNet-1k, 2 x 224 crops, no EMA, 800 epochs",
        epochs=800, lr=0.3, loss=dict(iterations=4, momentum=False), **imagenet_common,
    ))
    for epochs, lr in ((200, 0.4), (100, 0.5), (400, 0.4), (800, 0.3)):
        suffix = "" if epochs == 200 else f"_{epochs}ep"
        r.append(Recipe(
            name=f"intl_m_imagenet{suffix}",
            source=f"{INTL_SRC}: scripts/ep{epochs}_multi-crop_ema.sh `python main.py --dataset imagenet --epochs "
                   f"{epochs} --lr {lr} --method intl_m --multi-crop`; cfg.py defaults (m 0.996), main.py",
            description=f"INTL_M (momentum encoder) with multi-crop 2x224+192+160+128+96 on ImageNet-1k, {epochs} epochs",
            epochs=epochs, lr=lr, num_views=6, multi_crop=True, ema_momentum=0.996,
            loss=dict(iterations=4, momentum=True), **imagenet_common,
        ))
    return {recipe.name: recipe.validate() for recipe in r}


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
    """Rebuild a recipe from :meth:`Recipe.to_dict` output (a saved run config)."""
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"unknown recipe keys {sorted(unknown)} in config")
    data = dict(data)
    if "lr_drops" in data:
        data["lr_drops"] = tuple(data["lr_drops"])
    return Recipe(**data).validate()
