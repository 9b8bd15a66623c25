"""Datasets (ImageFolder/ImageNet layout, CIFAR, STL-10, Fashion-MNIST) and the per-method
multi-view transforms."""

from .datasets import balanced_subset, build_dataset, dataset_stats
from .transforms import SeededViews, build_view_transform, derive_seed, eval_transform

__all__ = ["build_dataset", "balanced_subset", "dataset_stats", "build_view_transform", "eval_transform",
           "SeededViews", "derive_seed"]
