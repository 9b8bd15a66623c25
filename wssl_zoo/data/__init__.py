"""Datasets (ImageFolder/ImageNet layout, CIFAR, STL-10, Fashion-MNIST), the per-method
multi-view pretraining transforms, deterministic per-sample seeding and GPU-side batched views."""

from .datasets import (
    ImageFolderDataset,
    balanced_subset,
    build_dataset,
    dataset_stats,
    eval_stats,
    load_rgb,
    read_idx,
    scan_images,
)
from .gpu_augment import BatchViewAugment, RawImages, batch_view_augments
from .transforms import (
    MultiViewTransform,
    SeededViews,
    build_view_transform,
    cwrgp_views,
    derive_seed,
    eval_transform,
    intl_views,
    wmse_views,
)

__all__ = [
    "ImageFolderDataset", "build_dataset", "balanced_subset", "dataset_stats", "eval_stats", "load_rgb", "read_idx", "scan_images",
    "MultiViewTransform", "build_view_transform", "wmse_views", "cwrgp_views", "intl_views", "eval_transform",
    "SeededViews", "derive_seed", "BatchViewAugment", "batch_view_augments", "RawImages",
]
