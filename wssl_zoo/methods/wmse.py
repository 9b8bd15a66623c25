"""W-MSE (Ermolov et al., ICML 2021): provenance of every recipe and protocol value.

Source: https://github.com/htdt/self-supervised @ d9662c8d07dafd194a9045375f4f6aa09f5b03e9
(README.md commands, cfg.py defaults, train.py, model.py, datasets/*.py), read line by line.
"""

from __future__ import annotations

from ._common import UNUSED, Fact, recipe_docs, src

REPO, COMMIT = "htdt/self-supervised", "d9662c8d07dafd194a9045375f4f6aa09f5b03e9"
NA = "wssl-zoo: not defined for W-MSE (dataclass default)"


def s(where: str) -> str:
    return src(REPO, COMMIT, where)


# (recipe, dataset, views, README line, epochs, lr, emb, w_size, w_iter, crop, crop source, stem, arch)
_ROWS = (
    ("wmse_cifar10", "cifar10", 4, 40, 1000, 3e-3, 64, 128, 1, 32, "datasets/cifar10.py:16", "cifar", "resnet18"),
    ("wmse_cifar100", "cifar100", 4, 41, 1000, 3e-3, 64, 128, 1, 32, "datasets/cifar100.py:16", "cifar", "resnet18"),
    ("wmse_stl10", "stl10", 4, 42, 2000, 2e-3, 128, 256, 1, 64, "datasets/stl10.py:22", "small", "resnet18"),
    ("wmse_tiny_imagenet", "tiny_imagenet", 4, 43, 1000, 2e-3, 128, 256, 1, 64, "datasets/tiny_in.py:16", "small",
     "resnet18"),
    ("wmse_cifar10_2views", "cifar10", 2, 48, 1000, 3e-3, 64, 128, 1, 32, "datasets/cifar10.py:16", "cifar", "resnet18"),
    ("wmse_cifar100_2views", "cifar100", 2, 49, 1000, 3e-3, 64, 128, 1, 32, "datasets/cifar100.py:16", "cifar",
     "resnet18"),
    ("wmse_stl10_2views", "stl10", 2, 50, 2000, 2e-3, 128, 256, 4, 64, "datasets/stl10.py:22", "small", "resnet18"),
    ("wmse_tiny_imagenet_2views", "tiny_imagenet", 2, 51, 1000, 2e-3, 128, 256, 4, 64, "datasets/tiny_in.py:16",
     "small", "resnet18"),
    ("wmse_imagenet100", "imagenet100", 4, 73, 240, 2e-3, 128, 256, 1, 224, "datasets/imagenet.py:26-31", "imagenet",
     "resnet18"),
    ("wmse_imagenet100_2views", "imagenet100", 2, 72, 240, 2e-3, 128, 256, 1, 224, "datasets/imagenet.py:26-31",
     "imagenet", "resnet18"),
    # Not the authors' recipe (no ImageNet-1k recipe published): IN-100's W-MSE 4 with a ResNet-50.
    ("wmse_imagenet", "imagenet", 4, 73, 240, 2e-3, 128, 256, 1, 224, "datasets/imagenet.py:26-31", "imagenet",
     "resnet50"),
)


def _recipe(name, dataset, views, line, epochs, lr, emb, w_size, w_iter, crop, crop_src, stem, arch):
    cmd = s(f"README.md:{line}")
    ours = name == "wmse_imagenet"
    t = {
        "method": Fact("wmse", s("methods/w_mse.py:8-14 (cfg.py:13 --method w_mse)")),
        "dataset": Fact(dataset, cmd + (" --dataset imagenet (= ImageNet-100, cfg.py:151 ~/IN100/)"
                                        if dataset.startswith("imagenet") else " --dataset")),
        "epochs": Fact(epochs, cmd + " --epoch"),
        "batch_size": Fact(256 if views == 4 else 512, cmd + " --bs 256" if views == 4 else s("cfg.py:111-113 --bs 512")),
        "lr": Fact(lr, cmd + " --lr"),
        "arch": Fact(arch, "wssl-zoo: ResNet-50 for the ImageNet-1k variant (W-MSE has no ImageNet-1k recipe)" if ours
                     else s("cfg.py:127-133 --arch resnet18")),
        "stem": Fact(stem, s("model.py:22-25 (conv1 3x3/1 unless imagenet; maxpool removed for CIFAR)")),
        "img_size": Fact(crop, s(crop_src + f" aug_transform({crop})")),
        "num_views": Fact(views, cmd + " --num_samples 4" if views == 4 else s("cfg.py:24-29 --num_samples 2")),
        "multi_crop": Fact(False, NA),
        "loss.w_size": Fact(w_size, cmd + " --w_size"),
        "loss.w_iter": Fact(w_iter, cmd + " --w_iter 4" if w_iter == 4 else s("cfg.py:86-91 --w_iter 1")),
        "loss.eps": Fact(0.0, s("cfg.py:73-75 --w_eps 0")),
        "loss.normalize": Fact(True, s("cfg.py:93-95 --no_norm unset; methods/w_mse.py:15 norm_mse_loss")),
        "projector.hidden_dim": Fact(1024, s("cfg.py:79-81 --head_size 1024")),
        "projector.out_dim": Fact(emb, cmd + " --emb"),
        "projector.num_layers": Fact(2, s("cfg.py:76-78 --head_layers 2")),
        "projector.hidden_bias": Fact(True, s("model.py:10 nn.Linear (bias), model.py:11-12 BatchNorm1d")),
        "projector.last_bias": Fact(True, s("model.py:15 nn.Linear (bias)")),
        "optimizer": Fact("adam", s("train.py:39 optim.Adam")),
        "lr_scaling": Fact("none", s("train.py:39 lr=cfg.lr (no batch scaling)")),
        "weight_decay": Fact(1e-6, s("cfg.py:66-68 --adam_l2 1e-6; train.py:39")),
        "exclude_bias_norm_wd": Fact(False, s("train.py:39 model.parameters(): one group")),
        "momentum": Fact(0.9, UNUSED),
        "schedule": Fact("wmse", s("train.py:43-54 500-step linear warm-up; cfg.py:55-61 --lr_step step")),
        "warmup_steps": Fact(500, s("train.py:43,50-51 lr_warmup < 500")),
        "warmup_epochs": Fact(0, UNUSED),
        "lr_drops": Fact((50, 25), s("cfg.py:114-120 --drop 50 25 (epochs before the end); train.py:22-24")),
        "drop_gamma": Fact(0.2, s("cfg.py:121-126 --drop_gamma 0.2")),
        "ema_momentum": Fact(None, NA),
        "cov_stop_epoch": Fact(None, NA),
        "knn_k": Fact(5, s("cfg.py:53 --knn 5")),
        "eval_every": Fact(20, s("cfg.py:107-109 --eval_every 20")),
        "zero_init_residual": Fact(False, s("model.py:21 models.<arch>(pretrained=False): torchvision's "
                                            "zero_init_residual=False")),
        "authors_precision": Fact("fp32", s("train.py (no autocast / GradScaler)")),
    }
    return t


RECIPES: dict[str, dict[str, Fact]] = {row[0]: _recipe(*row) for row in _ROWS}

# Each recipe's documentation: what it is and the authors' command it reproduces (its values and
# their sources are RECIPES above; wssl_zoo.pretrain.recipes builds the recipes from both).
RECIPE_DOCS: dict[str, dict[str, str]] = recipe_docs(REPO, COMMIT, {
    "wmse_cifar10": ("W-MSE 4 on cifar10",
                     "README.md `python -m train --dataset cifar10 --epoch 1000 --lr 3e-3 --num_samples 4 --bs 256 "
                     "--emb 64 --w_size 128`; cfg.py defaults"),
    "wmse_cifar100": ("W-MSE 4 on cifar100",
                      "README.md `python -m train --dataset cifar100 --epoch 1000 --lr 3e-3 --num_samples 4 --bs 256 "
                      "--emb 64 --w_size 128`; cfg.py defaults"),
    "wmse_stl10": ("W-MSE 4 on stl10",
                   "README.md `python -m train --dataset stl10 --epoch 2000 --lr 2e-3 --num_samples 4 --bs 256 --emb "
                   "128 --w_size 256`; cfg.py defaults"),
    "wmse_tiny_imagenet": ("W-MSE 4 on tiny_imagenet",
                           "README.md `python -m train --dataset tiny_in --epoch 1000 --lr 2e-3 --num_samples 4 --bs "
                           "256 --emb 128 --w_size 256`; cfg.py defaults"),
    "wmse_cifar10_2views": ("W-MSE 2 on cifar10",
                            "README.md `python -m train --dataset cifar10 --epoch 1000 --lr 3e-3 --emb 64 --w_size "
                            "128`; cfg.py defaults"),
    "wmse_cifar100_2views": ("W-MSE 2 on cifar100",
                             "README.md `python -m train --dataset cifar100 --epoch 1000 --lr 3e-3 --emb 64 --w_size "
                             "128`; cfg.py defaults"),
    "wmse_stl10_2views": ("W-MSE 2 on stl10",
                          "README.md `python -m train --dataset stl10 --epoch 2000 --lr 2e-3 --emb 128 --w_size 256 "
                          "--w_iter 4`; cfg.py defaults"),
    "wmse_tiny_imagenet_2views": ("W-MSE 2 on tiny_imagenet",
                                  "README.md `python -m train --dataset tiny_in --epoch 1000 --lr 2e-3 --emb 128 "
                                  "--w_size 256 --w_iter 4`; cfg.py defaults"),
    "wmse_imagenet100": ("W-MSE 4 on imagenet100",
                         "README.md `python -m train --dataset imagenet --epoch 240 --lr 2e-3 --num_samples 4 --bs "
                         "256 --emb 128 --w_size 256 --crop_s0 0.08 --cj0 0.8 --cj1 0.8 --cj2 0.8 --cj3 0.2 --gs_p "
                         "0.2`; cfg.py defaults"),
    "wmse_imagenet100_2views": ("W-MSE 2 on imagenet100",
                                "README.md `python -m train --dataset imagenet --epoch 240 --lr 2e-3 --emb 128 "
                                "--w_size 256 --crop_s0 0.08 --cj0 0.8 --cj1 0.8 --cj2 0.8 --cj3 0.2 --gs_p 0.2`; "
                                "cfg.py defaults"),
    "wmse_imagenet": ("W-MSE 4 on imagenet",
                      "README.md `python -m train --dataset imagenet --epoch 240 --lr 2e-3 --num_samples 4 --bs 256 "
                      "--emb 128 --w_size 256 --crop_s0 0.08 --cj0 0.8 --cj1 0.8 --cj2 0.8 --cj3 0.2 --gs_p 0.2`; "
                      "cfg.py defaults",
                      "Not the authors' recipe: W-MSE published no ImageNet-1k recipe; this is its ImageNet-100 "
                      "recipe (W-MSE 4) with a ResNet-50 backbone."),
})


# W-MSE's own evaluation (eval/sgd.py, eval/knn.py) is the one CW-RGP copied: see cwrgp.PROTOCOLS
# ("small", "knn5"), cited from both repositories there.
PROTOCOLS: dict[str, dict[str, Fact]] = {}
PROTOCOL_DOCS: dict[str, str] = {}


# The method's facts the library reads (``wssl_zoo.methods.fact(method, key)``): one home per method.
FACTS: dict[str, Fact] = {
    "head_on_concat": Fact(True, s("methods/w_mse.py:21-22 h = self.head(torch.cat(h)): one projector call on "
                                   "all views")),
    "gather_distributed": Fact(False, s("model.py:29 nn.DataParallel, one process: the whitening draws w_size "
                                        "sub-batches (methods/w_mse.py:26) from the batch the process holds; "
                                        "per DDP process that is the same draw (--gather yes pools them)")),
    # the widely copied CIFAR-10 "std" (0.2023, 0.1994, 0.2010), really a mean per-image std
    "train_stats": Fact({"cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
                         "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))},
                        s("datasets/cifar10.py:9, datasets/cifar100.py:9 (other datasets: the standard table)")),
    "eval_stats": Fact({}, s("datasets/*.py ds_clf / ds_test: base_transform(), the views' normalisation")),
    "converter_small_stems": Fact(("cifar", "small"), s("model.py:22-25 conv1 3x3/1 unless imagenet; maxpool "
                                                        "removed for CIFAR only")),
    "protocol_variants": Fact({}, s("README.md: one evaluation per protocol for every model")),
    # pretraining dataset -> the linear protocol the authors evaluated such a model with (eval.linear's default)
    "linear_protocol": Fact({"cifar10": "small", "cifar100": "small", "stl10": "small", "tiny_imagenet": "small",
                             "imagenet100": "small", "imagenet": "small"},
                            s("methods/base.py:26-38 get_acc: eval/sgd.py on features pre-computed once "
                              "(eval/get_data.py) of ds.clf / ds.test (train.py:71-72, test.py:30-34; README.md:20 "
                              "'we pre-compute embeddings for the entire dataset and then train a classifier on top'), "
                              "ImageNet-100 too (datasets/imagenet.py:35-41: centre-cropped clf/ and test/ images, no "
                              "augmentation). W-MSE published no ImageNet-1k evaluation: wssl-zoo's wmse_imagenet "
                              "recipe is evaluated with the same protocol as its ImageNet-100 one")),
    # key prefixes of the authors' checkpoints, tried in order (wssl_zoo.convert.LAYOUTS)
    "checkpoint_layout": Fact(dict(backbone=("model.module.", "module.model.module.", "module.model.", "model."),
                                   projector=("head.", "module.head."), hidden_bias=True),
                              s("train.py:76-77 torch.save(model.state_dict()): the method's encoder in "
                                "nn.DataParallel (model.py:29) -> model.module.*, head -> head.* "
                                "(methods/base.py:16-17); model.py:10 hidden Linear with bias")),
}
