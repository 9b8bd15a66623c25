"""Datasets (ImageFolder/ImageNet layout, CIFAR, STL-10, Fashion-MNIST), the per-method
multi-view pretraining transforms, deterministic per-sample seeding, and the same views made on the
training device (parameters drawn on the host, pixels made on the device)."""

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
from .device_views import DeviceViews, HostViews, ViewPlan, collate_views
from .transforms import (
    EpochKeyed,
    MultiViewTransform,
    SeededViews,
    build_view_transform,
    cwrgp_views,
    derive_seed,
    eval_transform,
    intl_views,
    seeded,
    wmse_views,
)

__all__ = [
    "ImageFolderDataset", "build_dataset", "balanced_subset", "dataset_stats", "eval_stats", "load_rgb", "read_idx", "scan_images",
    "MultiViewTransform", "build_view_transform", "wmse_views", "cwrgp_views", "intl_views", "eval_transform",
    "SeededViews", "EpochKeyed", "seeded", "derive_seed", "ViewPlan", "HostViews", "DeviceViews", "collate_views",
]
