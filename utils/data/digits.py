"""The offline dataset: scikit-learn's bundled handwritten digits, upsampled to 32×32 RGB, split like CIFAR
(noisy-label training images, clean validation and test images). What the demo and the tests run on."""
import gzip
import importlib.util
import os

import numpy as np
import torch
import torch.nn.functional as F

from utils.data.splits import ImageSplits


def load_digits_splits(size=32, n_val=200, n_test=400, seed=0):
    """scikit-learn's bundled 8×8 digits, upsampled to size×size RGB uint8 images.

    Real handwritten data that ships with scikit-learn, small enough for CPU tests and the demo.
    """
    images, target = bundled_digits()
    order = np.random.default_rng(seed).permutation(len(target))
    x = torch.from_numpy(images[order]).float()[:, None] / 16.0
    x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(target[order]).long()
    n_train = len(y) - n_val - n_test
    mean = tuple([float(x.float().mean() / 255)] * 3)
    std = tuple([float(x.float().std() / 255)] * 3)
    return ImageSplits(name='digits', n_class=10,
                       train_images=x[:n_train], train_clean=y[:n_train],
                       val_images=x[n_train:n_train + n_val], val_labels=y[n_train:n_train + n_val],
                       test_images=x[n_train + n_val:], test_labels=y[n_train + n_val:],
                       mean=mean, std=std, class_names=[str(d) for d in range(10)])


def bundled_digits():
    """scikit-learn's digits as `load_digits` gives them (images N×8×8 float64 in 0..16, integer targets),
    read from the CSV it ships: importing scikit-learn takes about a second, which every demo process and
    test subprocess paid for 20 ms of reading. Where the file is not (another layout), its loader."""
    spec = importlib.util.find_spec('sklearn')  # finds the package without running it
    folders = spec.submodule_search_locations if spec else None
    path = os.path.join(folders[0], 'datasets', 'data', 'digits.csv.gz') if folders else ''
    if not os.path.isfile(path):
        from sklearn.datasets import load_digits
        digits = load_digits()
        return digits.images, digits.target
    with gzip.open(path, 'rt') as f:
        table = np.loadtxt(f, delimiter=',')
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
