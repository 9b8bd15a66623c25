"""INTL (Weng et al., ICLR 2024): provenance of every recipe and protocol value.

Source: https://github.com/winci-ai/INTL @ 0aa69af20a263d1d714e45bc835925a84dc11956
(scripts/*.sh, cfg.py, main.py, cifar/cfg.py, cifar/main.py, src/model.py, src/transform.py,
evaluate.py), read line by line.
"""

from __future__ import annotations

from ._common import UNUSED, Fact, recipe_docs, src

REPO, COMMIT = "winci-ai/INTL", "0aa69af20a263d1d714e45bc835925a84dc11956"
NA = "wssl-zoo: not defined for this INTL recipe (dataclass default)"


def s(where: str) -> str:
    return src(REPO, COMMIT, where)


def _common(cfg: str, main: str) -> dict[str, Fact]:
    return {
        "method": Fact("intl", s("methods/intl.py:5-25")),
        "loss.iterations": Fact(4, s(f"{cfg} --iters 4")),
        "projector.num_layers": Fact(3, s(f"{cfg} --projection_layers 3")),
        "projector.hidden_bias": Fact(False, s("src/model.py:9 nn.Linear(..., bias=False) + BatchNorm1d")),
        "projector.last_bias": Fact(True, s("src/model.py:13 nn.Linear (bias)")),
        "optimizer": Fact("sgd", s(f"{main} torch.optim.SGD, momentum 0.9")),
        "lr_scaling": Fact("batch/256", s(f"{main.split(':')[0]}:{60 if main.startswith('main') else 65} "
                                          "base_lr = lr * bs / 256")),
        "momentum": Fact(0.9, s(f"{main} momentum=0.9")),
        "schedule": Fact("warmup_cosine", s("main.py:190-200 (cifar/main.py the same): linear warm-up per step, "
                                            "cosine to 0.001 x base_lr")),
        "warmup_steps": Fact(0, UNUSED),
        "warmup_epochs": Fact(2, s(f"{'cifar/cfg.py:88-93' if cfg.startswith('cifar') else 'cfg.py:72-76'} "
                                   "--warmup_eps 2")),
        "lr_drops": Fact((), UNUSED),
        "drop_gamma": Fact(0.2, UNUSED),
        "cov_stop_epoch": Fact(None, NA),
        "knn_k": Fact(5, s("cifar/cfg.py:95 --knn 5") if cfg.startswith("cifar") else
                      "wssl-zoo: monitor k (main.py has no kNN monitor)"),
    }


def _cifar(ds: str) -> dict[str, Fact]:
    cmd = s(f"scripts/{ds}.sh")
    t = _common("cifar/cfg.py:84-86", "cifar/main.py:79-80")
    t.update({
        "dataset": Fact(ds, cmd + f" --dataset {ds}"),
        "epochs": Fact(1000, cmd + " --epochs 1000"),
        "batch_size": Fact(256, s("cifar/cfg.py:23-25 --bs 256")),
        "lr": Fact(0.3, cmd + " --lr 0.3"),
        "arch": Fact("resnet18", cmd + " --arch resnet18"),
        "stem": Fact("cifar_pad2", s("src/model.py:23-25 conv1 3x3/1 pad 1, maxpool removed, inside "
                                     "src/resnet.py:156,276 ConstantPad2d(1): padding 2 in effect (quirk; corrected: cifar)")),
        "img_size": Fact(32, s("cifar/transform.py:60 crop_size=32")),
        "num_views": Fact(2, s("cifar/cfg.py:74-79 --nmb_crops 2")),
        "multi_crop": Fact(False, NA),
        "loss.momentum": Fact(False, cmd + " --method intl"),
        "projector.hidden_dim": Fact(2048, cmd + " --projection_size 2048"),
        "projector.out_dim": Fact(2048, s("cifar/cfg.py:106 --emb 2048")),
        "weight_decay": Fact(1e-4, cmd + " --wd 1e-4"),
        "exclude_bias_norm_wd": Fact(False, s("cifar/main.py:78-80 model.parameters(): one group")),
        "ema_momentum": Fact(None, NA),
        "eval_every": Fact(5, s("cifar/cfg.py:111-113 --eval_every 5")),
        "zero_init_residual": Fact(False, s("src/model.py:18-22 zero_init only when arch != resnet18")),
        "authors_precision": Fact("fp32", s("cifar/main.py (no autocast / GradScaler)")),
    })
    return t


def _imagenet(name: str, script: str, epochs: int, lr: float, multi: bool) -> dict[str, Fact]:
    cmd = s(f"scripts/{script}")
    t = _common("cfg.py:68-70", "main.py:81-83")
    t.update({
        "dataset": Fact("imagenet", cmd + " --dataset imagenet"),
        "epochs": Fact(epochs, cmd + f" --epochs {epochs}"),
        "batch_size": Fact(256, s("cfg.py:23 --bs 256 (global; main.py:67 splits it over the GPUs)")),
        "lr": Fact(lr, cmd + f" --lr {lr}"),
        "arch": Fact("resnet50", s("cfg.py:11 --arch resnet50")),
        "stem": Fact("imagenet", s("src/resnet.py:141-146 pad 1 + 7x7/2 pad 2 (= torchvision's pad 3), maxpool")),
        "img_size": Fact(224, s("cfg.py:83 --crops_size 224 224")),
        "num_views": Fact(6 if multi else 2, s("main.py:103 Multi_Crop(cfg): 2x224+192+160+128+96" if multi
                                               else "cfg.py:80 --nmb_crops 1 1")),
        "multi_crop": Fact(multi, cmd + (" --multi-crop" if multi else " (no --multi-crop)")),
        "loss.momentum": Fact(multi, cmd + (" --method intl_m" if multi else " --method intl")),
        "projector.hidden_dim": Fact(8192, s("cfg.py:103-104 --projection_size 8192")),
        "projector.out_dim": Fact(8192, s("cfg.py:106 --emb 8192")),
        "weight_decay": Fact(1e-5, s("cfg.py:28 --wd 1e-5")),
        "exclude_bias_norm_wd": Fact(True, s("main.py:73-83 1-d parameters (biases, BN) with weight_decay 0")),
        "ema_momentum": Fact(0.996, s("cfg.py:108-109 --m 0.996; main.py:202-204 cosine to 1")) if multi
        else Fact(None, NA),
        "eval_every": Fact(10, "wssl-zoo: monitor interval (main.py has no kNN monitor)"),
        "zero_init_residual": Fact(True, s("src/model.py:18-22 resnet50 != resnet18 -> zero_init_residual=True")),
        "authors_precision": Fact("fp16", s("main.py:129,174-178 torch.cuda.amp autocast + GradScaler")),
    })
    return t


def _in100() -> dict[str, Fact]:
    cmd = s("scripts/in100.sh:2-11")
    t = _imagenet("intl_imagenet100", "in100.sh:2-11", 400, 0.5, False)
    t.update({
        "dataset": Fact("imagenet100", cmd + " --dataset in100"),
        "batch_size": Fact(128, cmd + " --bs 128"),
        "arch": Fact("resnet18", cmd + " --arch resnet18"),
        "projector.hidden_dim": Fact(4096, cmd + " --projection_size 4096"),
        "weight_decay": Fact(2.5e-5, cmd + " --wd 2.5e-5"),
        "zero_init_residual": Fact(False, s("src/model.py:18-22 zero_init only when arch != resnet18")),
    })
    return t


RECIPES: dict[str, dict[str, Fact]] = {
    "intl_cifar10": _cifar("cifar10"),
    "intl_cifar100": _cifar("cifar100"),
    "intl_imagenet100": _in100(),
    "intl_imagenet": _imagenet("intl_imagenet", "ep800.sh:3-8", 800, 0.3, False),
    "intl_m_imagenet": _imagenet("intl_m_imagenet", "ep200_multi-crop_ema.sh:3-9", 200, 0.4, True),
    "intl_m_imagenet_100ep": _imagenet("intl_m_imagenet_100ep", "ep100_multi-crop_ema.sh:3-9", 100, 0.5, True),
    "intl_m_imagenet_400ep": _imagenet("intl_m_imagenet_400ep", "ep400_multi-crop_ema.sh:3-9", 400, 0.4, True),
    "intl_m_imagenet_800ep": _imagenet("intl_m_imagenet_800ep", "ep800_multi-crop_ema.sh:3-9", 800, 0.3, True),
}


# Each recipe's documentation: what it is and the authors' command it reproduces (its values and
# their sources are RECIPES above; wssl_zoo.pretrain.recipes builds the recipes from both).
RECIPE_DOCS: dict[str, dict[str, str]] = recipe_docs(REPO, COMMIT, {
    "intl_cifar10": ("INTL on cifar10",
                     "scripts/cifar10.sh `python cifar/main.py --dataset cifar10 --arch resnet18 --projection_size "
                     "2048 --epochs 1000 --lr 0.3 --wd 1e-4 --method intl`; cifar/cfg.py defaults"),
    "intl_cifar100": ("INTL on cifar100",
                      "scripts/cifar100.sh `python cifar/main.py --dataset cifar100 --arch resnet18 "
                      "--projection_size 2048 --epochs 1000 --lr 0.3 --wd 1e-4 --method intl`; cifar/cfg.py defaults"),
    "intl_imagenet100": ("INTL on ImageNet-100",
                         "scripts/in100.sh `python main.py --dataset in100 --arch resnet18 --bs 128 "
                         "--projection_size 4096 --epochs 400 --lr 0.5 --wd 2.5e-5 --method intl`; cfg.py defaults"),
    "intl_imagenet": ("INTL on ImageNet-1k, 2 x 224 crops, no EMA, 800 epochs",
                      "scripts/ep800.sh `python main.py --dataset imagenet --epochs 800 --lr 0.3 --method intl`; "
                      "cfg.py defaults"),
    "intl_m_imagenet": ("INTL_M (momentum encoder) with multi-crop 2x224+192+160+128+96 on ImageNet-1k, 200 epochs",
                        "scripts/ep200_multi-crop_ema.sh `python main.py --dataset imagenet --epochs 200 --lr 0.4 "
                        "--method intl_m --multi-crop`; cfg.py defaults (m 0.996), main.py"),
    "intl_m_imagenet_100ep": ("INTL_M (momentum encoder) with multi-crop 2x224+192+160+128+96 on ImageNet-1k, 100 "
                              "epochs",
                              "scripts/ep100_multi-crop_ema.sh `python main.py --dataset imagenet --epochs 100 --lr "
                              "0.5 --method intl_m --multi-crop`; cfg.py defaults (m 0.996), main.py"),
    "intl_m_imagenet_400ep": ("INTL_M (momentum encoder) with multi-crop 2x224+192+160+128+96 on ImageNet-1k, 400 "
                              "epochs",
                              "scripts/ep400_multi-crop_ema.sh `python main.py --dataset imagenet --epochs 400 --lr "
                              "0.4 --method intl_m --multi-crop`; cfg.py defaults (m 0.996), main.py"),
    "intl_m_imagenet_800ep": ("INTL_M (momentum encoder) with multi-crop 2x224+192+160+128+96 on ImageNet-1k, 800 "
                              "epochs",
                              "scripts/ep800_multi-crop_ema.sh `python main.py --dataset imagenet --epochs 800 --lr "
                              "0.3 --method intl_m --multi-crop`; cfg.py defaults (m 0.996), main.py"),
})


def _linear(lr: float, lr_src: str) -> dict[str, Fact]:
    return {
        "features": Fact("augmented", s("evaluate.py:170 RandomResizedCrop(224) + flip every epoch, frozen backbone")),
        "optimizer": Fact("sgd", s("evaluate.py:94 SGD momentum 0.9")),
        "lr": Fact(lr, lr_src),
        "epochs": Fact(100, s("scripts/ep800.sh:12 --epochs 100")),
        "batch_size": Fact(256, s("cfg.py:23 --bs 256")),
        "weight_decay": Fact(0.0, s("evaluate.py:94 weight_decay=0 (hard-coded)")),
        "momentum": Fact(0.9, s("evaluate.py:94 momentum=0.9")),
        "nesterov": Fact(False, s("evaluate.py:94 SGD without nesterov")),
        "schedule": Fact("step", s("cfg.py:131 --schedule step (MultiStepLR)")),
        "milestones": Fact((60, 80), s("evaluate.py:97 MultiStepLR milestones [60, 80]")),
        "gamma": Fact(0.1, s("evaluate.py:97 gamma=0.1")),
        "final_lr": Fact(0.0, UNUSED),
        "standardize": Fact(False, s("evaluate.py no feature standardisation")),
    }


def _semi(lr_backbone: float, script: str) -> dict[str, Fact]:
    cmd = s(f"scripts/{script}")
    return {
        "epochs": Fact(20, cmd + " --epochs 20"),
        "epochs_1pct": Fact(20, cmd + " --epochs 20 (--train-percent 1)"),
        "epochs_10pct": Fact(20, cmd + " --epochs 20 (--train-percent 10)"),
        "batch_size": Fact(256, s("cfg.py:23 --bs 256")),
        "lr_backbone": Fact(lr_backbone, cmd + f" --lr-backbone {lr_backbone}"),
        "lr_head": Fact(0.2, cmd + " --lr-classifier 0.2"),
        "weight_decay": Fact(0.0, s("evaluate.py:94 weight_decay=0 (hard-coded)")),
        "momentum": Fact(0.9, s("evaluate.py:94 momentum=0.9")),
        "nesterov": Fact(False, s("evaluate.py:94 SGD without nesterov")),
        "schedule": Fact("step", s("cfg.py:131 --schedule step: milestones past epoch 20, so the lr is constant")),
        "milestones": Fact((60, 80), s("evaluate.py:97 MultiStepLR milestones [60, 80]")),
        "gamma": Fact(0.1, s("evaluate.py:97 gamma=0.1")),
        "bn_train": Fact(True, s("evaluate.py:249 model.train() (--weights finetune)")),
    }


# Each protocol's one-line source (its values and their sources are PROTOCOLS below); records carry it, so its
# text (the 12-digit commit included) stays as the records in zoo/results have it.


def _protocol_source(where: str) -> str:
    return f"{REPO}@{COMMIT[:12]} {where}"


PROTOCOL_DOCS: dict[str, str] = {
    "intl": _protocol_source("evaluate.py, cfg.py, scripts/ep100_multi-crop_ema.sh (--weights freeze --schedule "
                             "step --lr-classifier 0.4 --bs 256)"),
    "intl_plain": _protocol_source("evaluate.py, cfg.py:138, scripts/ep800.sh:11-15, scripts/in100.sh:14-18 "
                                   "(--lr-classifier 0.2: the plain 800-epoch model and ImageNet-100)"),
    "semi_intl": _protocol_source("evaluate.py, cfg.py, scripts/ep100_multi-crop_ema.sh (--weights finetune "
                                  "--train-percent 1|10 --epochs 20 --lr-backbone 0.004 --lr-classifier 0.2, default "
                                  "--schedule step: constant over 20 epochs); v1 used a cosine"),
    "semi_intl_plain": _protocol_source("evaluate.py, cfg.py, scripts/ep800.sh:18-25 (the plain 800-epoch model: "
                                        "--lr-backbone 0.006 --lr-classifier 0.2; constant lr)"),
}

PROTOCOLS: dict[str, dict[str, Fact]] = {
    "intl": _linear(0.4, s("scripts/ep100_multi-crop_ema.sh:14 --lr-classifier 0.4 (multi-crop + EMA models)")),
    "intl_plain": _linear(0.2, s("scripts/ep800.sh:13, scripts/in100.sh:16 --lr-classifier 0.2 (cfg.py:138)")),
    "semi_intl": _semi(0.004, "ep100_multi-crop_ema.sh:19-26"),
    "semi_intl_plain": _semi(0.006, "ep800.sh:18-25"),
}


# INTL's CIFAR evaluation normalises with these, not with its views' statistics (a quirk that shaped
# the reported CIFAR numbers, reproduced by default; ``normalisation="train"`` corrects it):
# cifar/eval/dataloader.py:63-67 (CIFAR-10: the std rounded to 3 digits) and :77-81 (CIFAR-100:
# CIFAR-10's statistics), used by the monitor and linear evaluation of cifar/main.py:107-110.
_CIFAR_EVAL = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))

# The method's facts the library reads (``wssl_zoo.methods.fact(method, key)``): one home per method.
FACTS: dict[str, Fact] = {
    "head_on_concat": Fact(False, s("methods/intl.py:19, methods/intl_m.py:41-42 "
                                    "self.projection(self.backbone(x)) per crop")),
    "gather_distributed": Fact(True, s("methods/whitening.py:14 torch.cat(FullGatherLayer.apply(x)) "
                                       "(methods/whitening.py:62-78 all_gather with gradients): IterNorm and the "
                                       "trace loss over the global batch; methods/base.py:18,31 trade-off from the "
                                       "global --bs")),
    "train_stats": Fact({}, s("cifar/transform.py:64-69, src/transform.py:86-87: the standard table's values")),
    "eval_stats": Fact({"cifar10": _CIFAR_EVAL, "cifar100": _CIFAR_EVAL}, s("cifar/eval/dataloader.py:63-67,77-81")),
    "converter_small_stems": Fact(("cifar_pad2",), s("src/model.py:23-25 (CIFAR only) inside src/resnet.py's "
                                                     "ResNet, which zero-pads by 1 before conv1 (src/resnet.py:156,276)")),
    # protocol asked for -> {recipe of the evaluated model: the protocol its authors ran on it}
    "protocol_variants": Fact({"intl": {"intl_imagenet": "intl_plain", "intl_imagenet100": "intl_plain"},
                               "semi_intl": {"intl_imagenet": "semi_intl_plain"}},
                              s("scripts/ep800.sh:13,21 and scripts/in100.sh:16 (--lr-classifier 0.2, "
                                "--lr-backbone 0.006) against scripts/ep*_multi-crop_ema.sh:14,19 (0.4, 0.004): the "
                                "plain models (no multi-crop, no EMA) are evaluated with other learning rates")),
    # pretraining dataset -> the linear protocol the authors evaluated such a model with (eval.linear's default;
    # protocol_variants above then picks intl_plain for the plain models)
    "linear_protocol": Fact({"cifar10": "small", "cifar100": "small", "imagenet100": "intl", "imagenet": "intl"},
                            s("cifar/main.py:126-128 get_acc (cifar/eval/evaluate.py: W-MSE's eval_sgd on "
                              "pre-computed features); scripts/in100.sh:13-18, scripts/ep800.sh:10-15, "
                              "scripts/ep100_multi-crop_ema.sh:11-16: evaluate.py --weights freeze (augmented images "
                              "every epoch)")),
    # key prefixes of the authors' checkpoints, tried in order (wssl_zoo.convert.LAYOUTS)
    "checkpoint_layout": Fact(dict(backbone=("module.backbone.", "backbone."), projector=("module.projection.", "projection."),
                                   momentum_backbone=("module.momentum_backbone.", "momentum_backbone."),
                                   momentum_projector=("module.momentum_projection.", "momentum_projection."),
                                   hidden_bias=False),
                              s("main.py:143-147 state_dict of the DDP-wrapped method (methods/base.py:13-14 backbone, "
                                "projection; methods/intl_m.py:14-15 momentum_*); src/model.py:9 hidden Linear without bias")),
}
