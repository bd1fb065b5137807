"""CIFAR-10/100 (45k noisy-label training, 5k clean validation, 10k test images) and the offline
digits, as uint8 tensors.

Images stay uint8 N×3×H×W so a whole CIFAR training set (150 MB) sits on the GPU; augmentation and
normalisation happen there in batches (utils/data/images.py).
"""
import os
import shutil

import numpy as np
import torch

from utils.data.digits import load_digits_splits
from utils.data.noise import check_label_range
from utils.data.splits import ImageSplits
from utils.errors import DatasetMissing, SetupError
from utils.storage.loading import load_pickle
from utils.storage.saving import missing_folders

CIFAR_N_TRAIN = 45000  # the first 45k training images are trained on with noisy labels

CIFAR_CLASSES = {'cifar10': 10, 'cifar100': 100}
CIFAR_FOLDERS = {
    'cifar10': ('cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)], ['test_batch'], 'labels'),
    'cifar100': ('cifar-100-python', ['train'], ['test'], 'fine_labels'),
}


def _integer_array(values, path, key):
    try:
        return np.asarray(values, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DatasetMissing(f'CIFAR batch {path}: {key!r} is not a list of integer labels ({exc}); '
                             f're-download the dataset') from None


def _checked_batch(batch, path, label_key):
    """(images N×3×32×32 uint8, labels N) of one batch, or a refusal naming the file: a batch whose
    image and label counts differ would shift every later label by the difference."""
    if not isinstance(batch, dict) or 'data' not in batch or label_key not in batch:
        raise DatasetMissing(f'CIFAR batch {path} is not a dict with "data" and {label_key!r}; '
                             f're-download the dataset')
    data = np.asarray(batch['data'])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetMissing(f'CIFAR batch {path}: "data" must be N×3072 uint8, found {data.shape} '
                             f'{data.dtype}; re-download the dataset')
    labels = _integer_array(batch[label_key], path, label_key)
    if len(labels) != len(data):
        raise DatasetMissing(f'CIFAR batch {path} holds {len(data)} images but {len(labels)} labels; '
                             f're-download the dataset')
    return data.reshape(-1, 3, 32, 32), labels


def _coarse_labels(values, path, n_images):
    """CIFAR-100's super-class of each image: one per image, or the fine → coarse map cannot be built."""
    coarse = _integer_array(values, path, 'coarse_labels')
    if len(coarse) != n_images:
        raise DatasetMissing(f'CIFAR batch {path} holds {n_images} images but {len(coarse)} coarse_labels; '
                             f're-download the dataset')
    return coarse


def _read_batches(folder, names, label_key):
    images, labels, coarse = [], [], []
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DatasetMissing(f'CIFAR folder {folder} is incomplete: {name} is missing. Re-download it or '
                                 f'point --data_root elsewhere.')
        batch = load_pickle(path, 'CIFAR batch', fix='re-download the dataset or point --data_root elsewhere')
        batch_images, batch_labels = _checked_batch(batch, path, label_key)
        images.append(batch_images)
        labels.append(batch_labels)
        if 'coarse_labels' in batch:
            coarse.append(_coarse_labels(batch['coarse_labels'], path, len(batch_labels)))
    coarse = np.concatenate(coarse) if coarse else None
    return np.concatenate(images), np.concatenate(labels), coarse


def _download_cifar(name, root):
    import torchvision
    cls = torchvision.datasets.CIFAR10 if name == 'cifar10' else torchvision.datasets.CIFAR100
    cls(root=root, train=True, download=True)


def load_cifar_arrays(name, root, download=True):
    """(train_x, train_y, test_x, test_y, coarse_of_class) from the python-version batches.

    Reads the pickles directly, so a re-encoded copy with other checksums loads too; downloads
    through torchvision only when the folder is absent.
    """
    if name not in CIFAR_FOLDERS:
        raise SetupError(f'unknown CIFAR dataset {name!r} (from --noise_type or --dataset): pass --dataset cifar10 '
                         f'or cifar100')
    folder_name, train_files, test_files, label_key = CIFAR_FOLDERS[name]
    folder = os.path.join(root, folder_name)
    if not os.path.isdir(folder) and download:
        made = missing_folders(root)
        try:
            _download_cifar(name, root)
        except Exception as exc:  # offline, or the server refused
            if made:  # the folders the attempt made (a mistyped --data_root), and its partial archive
                shutil.rmtree(made[-1], ignore_errors=True)
            raise DatasetMissing(
                f'{name} is not under {folder} and could not be downloaded ({exc}). Pass --data_root '
                f'DIR where DIR/{folder_name}/ holds the python-version batches.') from exc
    if not os.path.isdir(folder):
        raise DatasetMissing(f'{name} not found: {folder} does not exist. Pass --data_root DIR where '
                             f'DIR/{folder_name}/ holds the python-version batches.')
    train_x, train_y, train_coarse = _read_batches(folder, train_files, label_key)
    test_x, test_y, _ = _read_batches(folder, test_files, label_key)
    for labels, split in ((train_y, 'training'), (test_y, 'test')):
        check_label_range(labels, CIFAR_CLASSES[name], f'{name} {split} labels under {folder}')
    coarse_of_class = None
    if train_coarse is not None:
        coarse_of_class = np.zeros(CIFAR_CLASSES[name], dtype=np.int64)
        coarse_of_class[train_y] = train_coarse
    return train_x, train_y, test_x, test_y, coarse_of_class


def load_cifar(name, root, download=True, n_train=CIFAR_N_TRAIN):
    """CIFAR split as in the paper: first 45k training images (noisy), last 5k clean validation."""
    train_x, train_y, test_x, test_y, coarse = load_cifar_arrays(name, root, download)
    check_split_sizes(name, os.path.join(root, CIFAR_FOLDERS[name][0]), len(train_x), len(test_x), n_train)
    t = torch.from_numpy
    return ImageSplits(name=name, n_class=CIFAR_CLASSES[name],
                       train_images=t(train_x[:n_train]), train_clean=t(train_y[:n_train]),
                       val_images=t(train_x[n_train:]), val_labels=t(train_y[n_train:]),
                       test_images=t(test_x), test_labels=t(test_y), coarse_of_class=coarse,
                       class_names=cifar_class_names(name, root))


def check_split_sizes(name, folder, n_images, n_test, n_train):
    """Refuse a folder too small for the split before any work: with n_train or fewer training images
    the validation split is empty, and training fails only after the features are extracted."""
    fix = f're-download the dataset ({name} has 50000 training and 10000 test images) or point --data_root elsewhere'
    if n_images <= n_train:
        raise DatasetMissing(f'{name} under {folder} holds {n_images} training images: the first {n_train} are '
                             f'trained on and the rest validate, so it needs more than {n_train}; {fix}')
    if n_test == 0:
        raise DatasetMissing(f'{name} under {folder} holds no test images; {fix}')


CIFAR_META = {'cifar10': ('batches.meta', 'label_names'), 'cifar100': ('meta', 'fine_label_names')}


def cifar_class_names(name, root):
    """The class names in the dataset folder's meta file, or [] when it is absent or names another count
    of classes; a meta file that holds no list of names is refused."""
    meta_file, key = CIFAR_META[name]
    path = os.path.join(root, CIFAR_FOLDERS[name][0], meta_file)
    if not os.path.isfile(path):
        return []
    meta = load_pickle(path, 'CIFAR meta', fix='re-download the dataset')
    names = meta.get(key, []) if isinstance(meta, dict) else None
    listed = isinstance(names, (list, tuple)) or (isinstance(names, np.ndarray) and names.ndim == 1)
    if not listed:  # another file under the meta file's name
        raise DatasetMissing(f'CIFAR meta {path} is not a dict with a list of class names under {key!r}; '
                             f're-download the dataset, or delete {path} to train without class names')
    names = [n.decode(errors='replace') if isinstance(n, bytes) else str(n) for n in names]
    return names if len(names) == CIFAR_CLASSES[name] else []


def load_named(name, data_root='./data', download=True, n_train=CIFAR_N_TRAIN):
    """The in-memory datasets by name: cifar10, cifar100 (45k/5k/10k split) or digits (offline)."""
    if name == 'digits':
        return load_digits_splits()
    if name in CIFAR_FOLDERS:
        return load_cifar(name, data_root, download=download, n_train=n_train)
    raise ValueError(f'unknown dataset {name!r}: choose cifar10, cifar100 or digits')
