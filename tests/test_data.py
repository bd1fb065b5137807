"""CIFAR batches read from a local folder (no checksums), the split, and clear failures."""
import os
import pickle

import numpy as np
import pytest
import torch

from utils.data.cifar import load_cifar
import utils.data.digits
from utils.data.digits import bundled_digits, load_digits_splits
from utils.data.images import random_crop_flip
from utils.errors import DatasetMissing


def write_cifar10(root, n_per_batch=40, seed=0):
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(folder)
    names = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
    content = {}
    for name in names:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump({'data': data, 'labels': labels, 'batch_label': name}, f)
        content[name] = (data, labels)
    return content


def write_cifar100(root, n=60, seed=0):
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, 'cifar-100-python')
    os.makedirs(folder)
    for name in ('train', 'test'):
        fine = rng.integers(0, 100, n)
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump({'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         'fine_labels': fine.tolist(), 'coarse_labels': (fine // 5).tolist()}, f)


def test_cifar10_from_local_batches_in_order(tmp_path):
    content = write_cifar10(str(tmp_path))
    splits = load_cifar('cifar10', str(tmp_path), download=False, n_train=150)
    all_train = np.concatenate([content[f'data_batch_{i}'][0] for i in range(1, 6)])
    all_labels = sum([content[f'data_batch_{i}'][1] for i in range(1, 6)], [])
    assert splits.train_images.shape == (150, 3, 32, 32) and splits.val_images.shape == (50, 3, 32, 32)
    assert np.array_equal(splits.train_images.numpy().reshape(150, -1), all_train[:150])
    assert np.array_equal(splits.val_images.numpy().reshape(50, -1), all_train[150:])
    assert splits.train_clean.tolist() == all_labels[:150] and splits.val_labels.tolist() == all_labels[150:]
    assert splits.test_images.shape[0] == 40 and splits.n_class <= 10


def test_cifar100_fine_labels_and_superclasses(tmp_path):
    write_cifar100(str(tmp_path))
    splits = load_cifar('cifar100', str(tmp_path), download=False, n_train=50)
    seen = np.unique(splits.train_clean.numpy())
    assert np.array_equal(splits.coarse_of_class[seen], seen // 5)


def test_missing_and_incomplete_cifar_are_named(tmp_path):
    with pytest.raises(DatasetMissing, match='--data_root'):
        load_cifar('cifar10', str(tmp_path), download=False)
    write_cifar10(str(tmp_path))
    os.remove(tmp_path / 'cifar-10-batches-py' / 'data_batch_3')
    with pytest.raises(DatasetMissing, match='incomplete.*data_batch_3'):
        load_cifar('cifar10', str(tmp_path), download=False)


def test_download_failure_is_named(tmp_path, monkeypatch):
    import utils.data.cifar
    def offline(name, root):
        raise OSError('network unreachable')
    monkeypatch.setattr(utils.data.cifar, '_download_cifar', offline)
    with pytest.raises(DatasetMissing, match='could not be downloaded.*--data_root'):
        load_cifar('cifar10', str(tmp_path), download=True)
    assert os.path.isdir(tmp_path)  # the user's folder stays

    def partial(name, root):  # as torchvision does: the folder made, an archive begun, then the network fails
        os.makedirs(root)
        open(os.path.join(root, 'cifar-10-python.tar.gz'), 'wb').write(b'partial')
        offline(name, root)
    monkeypatch.setattr(utils.data.cifar, '_download_cifar', partial)
    with pytest.raises(DatasetMissing, match='could not be downloaded'):
        load_cifar('cifar10', str(tmp_path / 'typo' / 'data'), download=True)  # a mistyped --data_root
    assert os.listdir(tmp_path) == []  # leaves no folder behind


def test_digits_splits_are_disjoint_uint8_images():
    s = load_digits_splits()
    assert s.train_images.dtype == torch.uint8 and s.train_images.shape[1:] == (3, 32, 32)
    assert len(s.train_clean) + len(s.val_labels) + len(s.test_labels) == 1797
    assert len(s.val_labels) == 200 and len(s.test_labels) == 400


def test_the_digits_read_from_their_file_are_scikit_learns(monkeypatch):
    from sklearn.datasets import load_digits
    reference = load_digits()
    images, target = bundled_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(target, reference.target)
    assert images.dtype == reference.images.dtype and target.dtype == np.int64
    monkeypatch.setattr(utils.data.digits.importlib.util, 'find_spec', lambda name: None)  # another layout
    images, target = bundled_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(target, reference.target)


def test_random_crop_flip_is_a_shifted_or_mirrored_window():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(images, padding=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flips = 0
    for i in range(64):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        plain = any(torch.equal(out[i], w) for w in windows)
        mirrored = any(torch.equal(out[i], w.flip(-1)) for w in windows)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 15 < flips < 49  # about half are mirrored


SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'shared')


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED, 'data', 'cifar10_jpeg.npz')),
                    reason='real CIFAR-10 not beside the checkout')
def test_real_cifar10_from_the_shared_copy(tmp_path):
    """The real CIFAR-10 (JPEG re-encoding, official order) through the standard batches: 45k/5k/10k."""
    import subprocess
    import sys
    subprocess.run([sys.executable, os.path.join(SHARED, 'tools', 'cifar10_batches.py'), str(tmp_path)], check=True,
                   capture_output=True)
    splits = load_cifar('cifar10', str(tmp_path), download=False)
    blob = np.load(os.path.join(SHARED, 'data', 'cifar10_jpeg.npz'))
    assert splits.train_images.shape == (45000, 3, 32, 32) and splits.val_images.shape == (5000, 3, 32, 32)
    assert splits.test_images.shape == (10000, 3, 32, 32) and splits.n_class == 10
    train_labels = np.asarray(blob['train_labels'])
    assert np.array_equal(splits.train_clean.numpy(), train_labels[:45000])
    assert np.array_equal(splits.val_labels.numpy(), train_labels[45000:])
    assert np.array_equal(splits.test_labels.numpy(), np.asarray(blob['test_labels']))
    assert np.bincount(train_labels, minlength=10).tolist() == [5000] * 10
    assert splits.class_names == [str(c) for c in blob['classes']]  # from batches.meta, for the plots


def test_every_dataset_offers_one_splits_interface(digits):
    from utils.data.splits import FileSplits
    files = FileSplits('clothing1m', 3, ['a', 'b', 'c'], np.array([0, 2, 1]), ['d'], np.array([1]), ['e', 'f'],
                       np.array([2, 0]))
    assert (digits.in_memory, files.in_memory) == (True, False)
    assert files.size('test') == 2 and files.source('val') == ['d'] and digits.size('val') == len(digits.val_labels)
    # 'train' labels are the clean labels of the training images for every dataset (None where unknown);
    # the dataset's own noisy labels have their own name
    assert files.labels('train') is None and torch.equal(digits.labels('train'), digits.train_clean)
    assert files.own_noisy_labels.tolist() == [0, 2, 1] and digits.own_noisy_labels is None
    assert files.labels('test').tolist() == [2, 0]


def test_cifar_class_names_come_from_the_meta_file(tmp_path):
    write_cifar10(str(tmp_path))
    assert load_cifar('cifar10', str(tmp_path), download=False, n_train=150).class_names == []  # no meta file: no names
    names = ['plane', 'car', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
    with open(tmp_path / 'cifar-10-batches-py' / 'batches.meta', 'wb') as f:
        pickle.dump({'label_names': names, 'num_vis': 3072}, f)
    assert load_cifar('cifar10', str(tmp_path), download=False, n_train=150).class_names == names
