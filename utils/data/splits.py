"""The splits every dataset offers: noisy-label training images, clean validation and test images.

Two forms, one interface (`in_memory`, `size(split)`, `source(split)`, `labels(split)`, `images(split)`
or `paths(split)`, `own_noisy_labels`, `noisy_val`): ImageSplits holds uint8 image tensors (CIFAR,
digits), FileSplits the image files' paths (Food-101N, Clothing1M, WebVision, your own images).
"""
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import numpy as np
import torch

from utils.data.images import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD


@dataclass
class ImageSplits:
    """A dataset split for LRA-diffusion: noisy-label training images, clean validation and test.

    The interface every dataset shares (FileSplits too): `in_memory`, `size(split)`, `source(split)`
    (what features are computed from: here uint8 image tensors), `labels(split)` (the clean labels,
    None where unknown; for 'train' the clean labels of the training images), `own_noisy_labels`
    (the dataset's own noisy training labels, None for datasets whose noise is chosen by --noise_type)
    and `noisy_val` (whether the validation labels are noisy ones)."""
    in_memory: ClassVar[bool] = True
    own_noisy_labels: ClassVar[None] = None
    noisy_val: ClassVar[bool] = False
    name: str
    n_class: int
    train_images: torch.Tensor            # uint8 N×3×H×W
    train_clean: Optional[torch.Tensor]   # clean labels of the training images, where known
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: tuple = CIFAR_MEAN
    std: tuple = CIFAR_STD
    coarse_of_class: Optional[np.ndarray] = None  # CIFAR-100 super-class of each fine class
    class_names: list = field(default_factory=list)  # names of the classes, where the dataset has them
    extra: dict = field(default_factory=dict)

    def images(self, split):
        return getattr(self, f'{split}_images')

    source = images

    def size(self, split):
        return len(self.images(split))

    def labels(self, split):
        return {'train': self.train_clean, 'val': self.val_labels, 'test': self.test_labels}[split]


@dataclass
class FileSplits:
    """Noisy-label training files, clean validation and test files, labels as int64 arrays; the
    interface of ImageSplits (utils/data/cifar.py), with file paths as each split's source."""
    in_memory: ClassVar[bool] = False
    name: str
    n_class: int
    train_paths: list
    train_labels: np.ndarray        # the dataset's own (noisy) labels
    val_paths: list
    val_labels: np.ndarray
    test_paths: list
    test_labels: np.ndarray
    class_names: list = field(default_factory=list)
    train_clean: Optional[np.ndarray] = None
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    notes: dict = field(default_factory=dict)  # facts about the splits for the run's summary
    noisy_val: bool = False  # the validation labels are noisy ones (held out of training: no clean --val)
    resample: str = 'bilinear'  # how its images are resized, as the authors' loader of it does (RESAMPLE)
    test_resample: Optional[str] = None  # the test split's, where its loader differs (WebVision's ILSVRC2012)
    upright: bool = False  # turned as their EXIF Orientation says (a user's photos; the authors' loaders do not)
    rounding: str = 'authors'  # how sizes and crop offsets are rounded (utils/data/image_files.ROUNDINGS)

    def paths(self, split):
        return getattr(self, f'{split}_paths')

    def resample_of(self, split):
        return self.test_resample if split == 'test' and self.test_resample else self.resample

    source = paths

    def size(self, split):
        return len(self.paths(split))

    @property
    def own_noisy_labels(self):
        return self.train_labels

    def labels(self, split):
        """Clean labels: the validation and test labels, the training images' where known (else None)."""
        labels = {'train': self.train_clean, 'val': self.val_labels, 'test': self.test_labels}[split]
        return None if labels is None else torch.as_tensor(labels)
