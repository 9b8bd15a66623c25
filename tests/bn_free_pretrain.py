"""``python tests/bn_free_pretrain.py ARGS`` = ``python -m wssl_zoo.pretrain ARGS`` with every
BatchNorm of the backbone replaced by GroupNorm(1, C) (per sample, no batch statistics).

For the test that a DDP run on the CPU agrees with one process on the concatenated batch: under
DDP on the CPU each rank's BatchNorm normalises with its own half of the batch (SyncBatchNorm needs
a GPU), so only a network without batch statistics can agree. Everything else is the real CLI
and training loop, under torchrun as the README runs it."""

from __future__ import annotations

import sys

import torch
from torch import nn

from wssl_zoo import encoders

_create = encoders.create_backbone


def _groupnorm_instead_of_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            norm = nn.GroupNorm(1, child.num_features)
            with torch.no_grad():  # the BN's affine init (zero-init of the last BN included)
                norm.weight.copy_(child.weight)
                norm.bias.copy_(child.bias)
            setattr(module, name, norm)
        else:
            _groupnorm_instead_of_batchnorm(child)


def create_groupnorm_backbone(arch, stem="imagenet", **timm_kwargs):
    model = _create(arch, stem, **timm_kwargs)
    _groupnorm_instead_of_batchnorm(model)
    return model


if __name__ == "__main__":
    from wssl_zoo.pretrain.cli import main

    encoders.create_backbone = create_groupnorm_backbone  # the loop builds its backbone through this module
    sys.exit(main(sys.argv[1:]))
