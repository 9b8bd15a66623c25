"""CW-RGP (Weng et al., NeurIPS 2022): provenance of every recipe and protocol value.

Source: https://github.com/winci-ai/CW-RGP @ 5bbf6ed4df355d151fe278e87ad51dd2bff89a14
(scripts/base.sh, scripts/ImageNet.sh, base/cfg.py, base/train.py, base/model.py,
ImageNet/cfg.py, ImageNet/train.py, ImageNet/model.py, ImageNet/methods/cwrgp.py,
ImageNet/lincls.py, base/eval/sgd.py, base/eval/knn.py), read line by line.
"""

from __future__ import annotations

from ._common import UNUSED, Fact, recipe_docs, src

REPO, COMMIT = "winci-ai/CW-RGP", "5bbf6ed4df355d151fe278e87ad51dd2bff89a14"
NA = "wssl-zoo: not defined for this CW-RGP recipe (dataclass default)"


def s(where: str) -> str:
    return src(REPO, COMMIT, where)


# (recipe, dataset, views, base.sh line, epochs, lr, emb, head, w_size, groups, w_iter, batch, crop, crop src, stem)
_BASE = (
    ("cwrgp_cifar10", "cifar10", 4, 3, 1000, 3e-3, 512, 1024, 64, 4, 1, 256, 32, "base/datasets/cifar10.py:16", "cifar"),
    ("cwrgp_cifar100", "cifar100", 4, 6, 1000, 3e-3, 512, 1024, 64, 4, 1, 256, 32, "base/datasets/cifar100.py:16", "cifar"),
    ("cwrgp_stl10", "stl10", 4, 9, 2000, 2e-3, 512, 1024, 64, 4, 1, 256, 64, "base/datasets/stl10.py:22", "small"),
    ("cwrgp_tiny_imagenet", "tiny_imagenet", 4, 12, 1000, 2e-3, 1024, 2048, 128, 2, 1, 256, 64,
     "base/datasets/tiny_in.py:131", "small"),
    ("cwrgp_cifar10_2views", "cifar10", 2, 16, 1000, 3e-3, 512, 1024, 64, 4, 4, 256, 32, "base/datasets/cifar10.py:16",
     "cifar"),
    ("cwrgp_cifar100_2views", "cifar100", 2, 19, 1000, 3e-3, 512, 1024, 64, 4, 1, 512, 32, "base/datasets/cifar100.py:16",
     "cifar"),
    ("cwrgp_stl10_2views", "stl10", 2, 22, 2000, 2e-3, 512, 1024, 64, 4, 1, 512, 64, "base/datasets/stl10.py:22",
     "small"),
    ("cwrgp_tiny_imagenet_2views", "tiny_imagenet", 2, 25, 1000, 2e-3, 1024, 2048, 128, 2, 1, 512, 64,
     "base/datasets/tiny_in.py:131", "small"),
)


def _base(name, dataset, views, line, epochs, lr, emb, head, w_size, groups, w_iter, batch, crop, crop_src, stem):
    cmd = s(f"scripts/base.sh:{line}")
    return {
        "method": Fact("cwrgp", s("base/methods/cwrgp.py (base/cfg.py:15 --method cwrgp)")),
        "dataset": Fact(dataset, cmd + " --dataset"),
        "epochs": Fact(epochs, cmd + " --epochs"),
        "batch_size": Fact(batch, cmd + " --bs 256" if batch == 256 else s("base/cfg.py:134 --bs 512")),
        "lr": Fact(lr, cmd + " --lr"),
        "arch": Fact("resnet18", s("base/cfg.py:150-155 --arch resnet18")),
        "stem": Fact(stem, s("base/model.py:22-25 (conv1 3x3/1 unless in100; maxpool removed for CIFAR)")),
        "img_size": Fact(crop, s(f"{crop_src} aug_transform({crop})")),
        "num_views": Fact(views, cmd + " --num_samples 4" if views == 4 else s("base/cfg.py:37-42 --num_samples 2")),
        "multi_crop": Fact(False, NA),
        "loss.w_size": Fact(w_size, cmd + " --w_size"),
        "loss.w_iter": Fact(w_iter, cmd + " --w_iter 4" if w_iter == 4 else s("base/cfg.py:104-109 --w_iter 1")),
        "loss.groups": Fact(groups, cmd + " --group"),
        "loss.random_groups": Fact(True, s("base/cfg.py:184-186 --no_rg unset (rand_group=True)")),
        "loss.eps": Fact(0.0, s("base/cfg.py:93 --w_eps 0")),
        "projector.hidden_dim": Fact(head, cmd + " --head_size 2048" if head == 2048 else s("base/cfg.py:99 --head_size 1024")),
        "projector.out_dim": Fact(emb, cmd + " --emb 1024" if emb == 1024 else s("base/cfg.py:132 --emb 512")),
        "projector.num_layers": Fact(2, s("base/cfg.py:96 --head_layers 2")),
        "projector.hidden_bias": Fact(True, s("base/model.py:10-12 nn.Linear (bias) + BatchNorm1d")),
        "projector.last_bias": Fact(True, s("base/model.py:15 nn.Linear (bias)")),
        "optimizer": Fact("adam", s("base/train.py:46 optim.Adam (base/cfg.py:86 --optimizer adam)")),
        "lr_scaling": Fact("none", s("base/train.py:46 lr=cfg.lr")),
        "weight_decay": Fact(1e-6, s("base/cfg.py:83 --weight_decay 1e-6")),
        "exclude_bias_norm_wd": Fact(False, s("base/train.py:46 model.parameters(): one group")),
        "momentum": Fact(0.9, UNUSED),
        "schedule": Fact("wmse", s("base/train.py:33-37 warm-up, base/train.py:14-24 MultiStepLR (base/cfg.py:75 step)")),
        "warmup_steps": Fact(500, s("base/cfg.py:57-62 --warmup_iters 500")),
        "warmup_epochs": Fact(0, UNUSED),
        "lr_drops": Fact((50, 25), s("base/cfg.py:136-141 --drop 50 25")),
        "drop_gamma": Fact(0.2, s("base/cfg.py:142-147 --drop_gamma 0.2")),
        "ema_momentum": Fact(None, NA),
        "cov_stop_epoch": Fact(None, NA),
        "knn_k": Fact(5, s("base/cfg.py:69 --knn 5")),
        "eval_every": Fact(10, s("base/cfg.py:130 --eval_every 10")),
        "zero_init_residual": Fact(True, s("base/model.py:21 models.<arch>(zero_init_residual=True)")),
        "authors_precision": Fact("fp32", s("base/train.py (no autocast / GradScaler)")),
    }


def _imagenet(epochs, cov_w, cov_stop, lines):
    cmd = s(f"scripts/ImageNet.sh:{lines}")
    return {
        "method": Fact("cwrgp", s("ImageNet/methods/cwrgp.py:7-22 (ImageNet/cfg.py:74)")),
        "dataset": Fact("imagenet", s("ImageNet/cfg.py:135 --dataset imagenet")),
        "epochs": Fact(epochs, cmd + " --epochs 200" if epochs == 200 else s("ImageNet/cfg.py:22 --epochs 100")),
        "batch_size": Fact(512, s("ImageNet/cfg.py:27 --bs 512 (4 GPUs x 128, ImageNet/train.py:99)")),
        "lr": Fact(0.05, s("ImageNet/cfg.py:32 --lr 0.05")),
        "arch": Fact("resnet50", s("ImageNet/cfg.py:15 --arch resnet50")),
        "stem": Fact("imagenet", s("ImageNet/model.py:21 torchvision ResNet unchanged")),
        "img_size": Fact(224, s("ImageNet/train.py:148 RandomResizedCrop(224, scale=(0.2, 1.))")),
        "num_views": Fact(4, s("ImageNet/cfg.py:88-92 --num_samples 4")),
        "multi_crop": Fact(False, NA),
        "loss.w_size": Fact(128, s("ImageNet/cfg.py:122 --w_size 128")),
        "loss.w_iter": Fact(1, s("ImageNet/cfg.py:124-128 --w_iter 1")),
        "loss.groups": Fact(2, s("ImageNet/cfg.py:152 --group 2")),
        "loss.random_groups": Fact(True, s("ImageNet/methods/cwrgp.py:43-44 rand_group (default on)")),
        "loss.eps": Fact(0.0, s("ImageNet/cfg.py:112 --w_eps 0")),
        "loss.cov_weight": Fact(cov_w, cmd + " --cov_w"),
        "loss.cov_block": Fact(128, s("ImageNet/methods/cwrgp.py:34-36 covariance_loss per GPU on its 512/4 = 128 "
                                      "samples (ImageNet/train.py:99), averaged by DDP")),
        "projector.hidden_dim": Fact(2048, s("ImageNet/cfg.py:118 --head_size 2048")),
        "projector.out_dim": Fact(1024, s("ImageNet/cfg.py:133 --emb 1024")),
        "projector.num_layers": Fact(3, s("ImageNet/cfg.py:115 --head_layers 3")),
        "projector.hidden_bias": Fact(True, s("ImageNet/model.py:10-12 nn.Linear (bias) + BatchNorm1d")),
        "projector.last_bias": Fact(True, s("ImageNet/model.py:15 nn.Linear (bias)")),
        "optimizer": Fact("sgd", s("ImageNet/train.py:119-120 optim.SGD")),
        "lr_scaling": Fact("batch/256", s("ImageNet/train.py:84 init_lr = lr * bs / 256")),
        "weight_decay": Fact(1e-4, s("ImageNet/cfg.py:38 --wd 1e-4")),
        "exclude_bias_norm_wd": Fact(False, s("ImageNet/train.py:118-120 model.parameters(): one group")),
        "momentum": Fact(0.9, s("ImageNet/cfg.py:36 --momentum 0.9")),
        "schedule": Fact("warmup_cosine_epoch", s("ImageNet/train.py:273-284 warm-up per step, half cosine per epoch")),
        "warmup_steps": Fact(500, s("ImageNet/cfg.py:97-101 --warmup_iters 500")),
        "warmup_epochs": Fact(0, UNUSED),
        "lr_drops": Fact((), UNUSED),
        "drop_gamma": Fact(0.2, UNUSED),
        "ema_momentum": Fact(None, NA),
        "cov_stop_epoch": Fact(cov_stop, cmd + " --cov_stop (ImageNet/methods/cwrgp.py:56-58)"),
        "knn_k": Fact(5, "wssl-zoo: monitor k (the authors' ImageNet code has no kNN monitor)"),
        "eval_every": Fact(10, "wssl-zoo: monitor interval (the authors' ImageNet code has no kNN monitor)"),
        "zero_init_residual": Fact(True, s("ImageNet/model.py:21 models.<arch>(zero_init_residual=True)")),
        "authors_precision": Fact("fp32", s("ImageNet/train.py (no autocast / GradScaler)")),
    }


RECIPES: dict[str, dict[str, Fact]] = {row[0]: _base(*row) for row in _BASE}
RECIPES["cwrgp_imagenet"] = _imagenet(200, 0.01, 100, "11-17")
RECIPES["cwrgp_imagenet_100ep"] = _imagenet(100, 0.005, 50, "3-8")

_LIN = "ImageNet/lincls.py"
_SGD = "base/eval/sgd.py (W-MSE htdt/self-supervised@d9662c8 eval/sgd.py)"

# Each recipe's documentation: what it is and the authors' command it reproduces (its values and
# their sources are RECIPES above; wssl_zoo.pretrain.recipes builds the recipes from both).
RECIPE_DOCS: dict[str, dict[str, str]] = recipe_docs(REPO, COMMIT, {
    "cwrgp_cifar10": ("CW-RGP 4 on cifar10",
                      "scripts/base.sh `python base/train.py --dataset cifar10 --epochs 1000 --lr 3e-3 --num_samples "
                      "4 --bs 256 --w_size 64 --group 4`; base/cfg.py defaults"),
    "cwrgp_cifar100": ("CW-RGP 4 on cifar100",
                       "scripts/base.sh `python base/train.py --dataset cifar100 --epochs 1000 --lr 3e-3 "
                       "--num_samples 4 --bs 256 --w_size 64 --group 4`; base/cfg.py defaults"),
    "cwrgp_stl10": ("CW-RGP 4 on stl10",
                    "scripts/base.sh `python base/train.py --dataset stl10 --epochs 2000 --lr 2e-3 --num_samples 4 "
                    "--bs 256 --w_size 64 --group 4`; base/cfg.py defaults"),
    "cwrgp_tiny_imagenet": ("CW-RGP 4 on tiny_imagenet",
                            "scripts/base.sh `python base/train.py --dataset tiny_in --epochs 1000 --lr 2e-3 "
                            "--num_samples 4 --bs 256 --emb 1024 --w_size 128 --group 2 --head_size 2048`; "
                            "base/cfg.py defaults"),
    "cwrgp_cifar10_2views": ("CW-RGP 2 on cifar10",
                             "scripts/base.sh `python base/train.py --dataset cifar10 --epochs 1000 --lr 3e-3 --bs "
                             "256 --w_size 64 --group 4 --w_iter 4`; base/cfg.py defaults"),
    "cwrgp_cifar100_2views": ("CW-RGP 2 on cifar100",
                              "scripts/base.sh `python base/train.py --dataset cifar100 --epochs 1000 --lr 3e-3 "
                              "--w_size 64 --group 4`; base/cfg.py defaults"),
    "cwrgp_stl10_2views": ("CW-RGP 2 on stl10",
                           "scripts/base.sh `python base/train.py --dataset stl10 --epochs 2000 --lr 2e-3 --w_size "
                           "64 --group 4`; base/cfg.py defaults"),
    "cwrgp_tiny_imagenet_2views": ("CW-RGP 2 on tiny_imagenet",
                                   "scripts/base.sh `python base/train.py --dataset tiny_in --epochs 1000 --lr 2e-3 "
                                   "--emb 1024 --w_size 128 --group 2 --head_size 2048`; base/cfg.py defaults"),
    "cwrgp_imagenet": ("CW-RGP 4 on ImageNet-1k, 200 epochs, covariance term until epoch 100",
                       "scripts/ImageNet.sh (CW-RGP 4, 200 epochs, --cov_w 0.01 --cov_stop 100); ImageNet/cfg.py "
                       "defaults; ImageNet/train.py (SGD, warm-up, cosine per epoch)"),
    "cwrgp_imagenet_100ep": ("CW-RGP 4 on ImageNet-1k, 100 epochs, covariance term until epoch 50",
                             "scripts/ImageNet.sh (CW-RGP 4, 100 epochs, --cov_w 0.005 --cov_stop 50); "
                             "ImageNet/cfg.py defaults; ImageNet/train.py (SGD, warm-up, cosine per epoch)"),
})


# Each protocol's one-line source (its values and their sources are PROTOCOLS below); records carry it, so its
# text (the 12-digit commit included) stays as the records in zoo/results have it.


def _protocol_source(where: str) -> str:
    return f"{REPO}@{COMMIT[:12]} {where}"


PROTOCOL_DOCS: dict[str, str] = {
    "cwrgp": _protocol_source("ImageNet/lincls.py, ImageNet/cfg.py (--lars, --lr_eval 0.1 x --bs_eval 1024/256, "
                              "--wd_eval 0)"),
    "small": _protocol_source("base/eval/sgd.py (W-MSE eval/sgd.py)"),
    "knn5": _protocol_source("base/eval/knn.py (W-MSE eval/knn.py); v2: ties go to the smallest class index, as there "
                             "(v1 gave them to the nearest neighbour's class)"),
}

PROTOCOLS: dict[str, dict[str, Fact]] = {
    "cwrgp": {
        "features": Fact("augmented", s(f"{_LIN}:211 backbone run on augmented images each epoch")),
        "optimizer": Fact("lars", s(f"{_LIN}:158-164 SGD wrapped in apex LARC(trust 0.001, clip=False) (--lars, "
                                    "scripts/ImageNet.sh:24)")),
        "lr": Fact(0.4, s(f"{_LIN}:120 lr_eval 0.1 (ImageNet/cfg.py:34) x bs_eval 1024 / 256")),
        "epochs": Fact(100, s("ImageNet/cfg.py:22 --epochs 100")),
        "batch_size": Fact(1024, s("ImageNet/cfg.py:30 --bs_eval 1024")),
        "weight_decay": Fact(0.0, s("ImageNet/cfg.py:41 --wd_eval 0")),
        "momentum": Fact(0.9, s("ImageNet/cfg.py:36 --momentum 0.9")),
        "nesterov": Fact(False, s(f"{_LIN}:158 SGD without nesterov")),
        "schedule": Fact("cosine", s(f"{_LIN}:427 half cosine per epoch")),
        "milestones": Fact((), UNUSED),
        "gamma": Fact(0.1, UNUSED),
        "final_lr": Fact(0.0, s(f"{_LIN}:427 cosine to 0")),
        "standardize": Fact(False, s(f"{_LIN} no feature standardisation")),
    },
    "small": {
        "features": Fact("cached", s(f"{_SGD}:6 on precomputed features; INTL's CIFAR evaluation is the same code "
                                     "(winci-ai/INTL@0aa69af cifar/eval/evaluate.py:6-60)")),
        "optimizer": Fact("adam", s("base/eval/sgd.py:15 optim.Adam")),
        "lr": Fact(1e-2, s("base/eval/sgd.py:8 lr_start 1e-2")),
        "epochs": Fact(500, s("base/eval/sgd.py:6 epoch=500")),
        "batch_size": Fact(1000, s("base/eval/sgd.py:20 randperm(...).view(-1, 1000)")),
        "weight_decay": Fact(5e-6, s("base/eval/sgd.py:15 weight_decay=5e-6")),
        "momentum": Fact(0.9, UNUSED),
        "nesterov": Fact(False, UNUSED),
        "schedule": Fact("exponential", s("base/eval/sgd.py:9,16 ExponentialLR per epoch")),
        "milestones": Fact((), UNUSED),
        "gamma": Fact(0.1, UNUSED),
        "final_lr": Fact(1e-6, s("base/eval/sgd.py:8 lr_end 1e-6")),
        "standardize": Fact(False, s("base/eval/sgd.py no feature standardisation")),
    },
    "knn5": {
        "k": Fact(5, s("base/cfg.py:69 --knn 5 (W-MSE cfg.py:53)")),
        "rule": Fact("majority-euclidean", s("base/eval/knn.py torch.cdist + majority vote, ties to the smallest class "
                                             "(= INTL cifar/eval/evaluate.py:20-32)")),
        "temperature": Fact(0.07, UNUSED),
    },
}


# The method's facts the library reads (``wssl_zoo.methods.fact(method, key)``): one home per method.
FACTS: dict[str, Fact] = {
    "head_on_concat": Fact(True, s("base/methods/cwrgp.py:26-28, ImageNet/methods/cwrgp.py:26-28 "
                                   "h = self.head(torch.cat(h))")),
    "gather_distributed": Fact(False, s("ImageNet/methods/cwrgp.py:24-46 whitens each GPU's local batch (no "
                                        "all_gather in ImageNet/methods/whitening.py; DDP, ImageNet/train.py:99-101); "
                                        "base/model.py:29 nn.DataParallel: one process")),
    "train_stats": Fact({"cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
                         "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))},
                        s("base/datasets/cifar10.py:9, base/datasets/cifar100.py:9 (W-MSE's)")),
    "eval_stats": Fact({}, s("base/datasets/*.py ds_clf / ds_test: base_transform(), the views' normalisation")),
    "converter_small_stems": Fact(("cifar", "small"), s("base/model.py:22-25 conv1 3x3/1 unless in100; maxpool "
                                                        "removed for CIFAR only")),
    "protocol_variants": Fact({}, s("scripts/*.sh: one evaluation per protocol for every model")),
    # pretraining dataset -> the linear protocol the authors evaluated such a model with (eval.linear's default)
    "linear_protocol": Fact({"cifar10": "small", "cifar100": "small", "stl10": "small", "tiny_imagenet": "small",
                             "imagenet": "cwrgp"},
                            s("base/methods/base.py:30-42 get_acc: base/eval/sgd.py on pre-computed features "
                              "(base/train.py:90); ImageNet: scripts/ImageNet.sh:19-24 ImageNet/lincls.py --lars")),
    # key prefixes of the authors' checkpoints, tried in order (wssl_zoo.convert.LAYOUTS)
    "checkpoint_layout": Fact(dict(backbone=("module.model.module.", "module.model.", "model.module.", "model."),
                                   projector=("module.head.", "head."), hidden_bias=True),
                              s("ImageNet/train.py:183-187 state_dict of the DDP-wrapped method -> module.model.*, "
                                "module.head.* (ImageNet/model.py:24-25: nn.DataParallel without DDP -> model.module.*); "
                                "base/train.py:95-100 -> model.module.*, head.*; base/model.py:10 Linear with bias")),
}
