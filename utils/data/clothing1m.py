"""Clothing1M in its official layout, trained by default on the authors' `cc_select` subset."""
import os

import numpy as np

from utils.data.image_files import need_file, numbered_lines, read_lines, read_pairs
from utils.data.images import CLOTHING1M_MEAN, CLOTHING1M_STD
from utils.data.splits import FileSplits
from utils.errors import DatasetMissing
from utils.storage.published import cc_select_paths


def _kv(path, what):
    return {p: l for p, l in zip(*read_pairs(path, what))}


CC_SELECT = ('cc_select_img.txt', 'cc_select_label.txt')


def cc_select_files(root, inputs_dir=None):
    """The authors' Clothing1M training subset: cc_select_img.txt (keys) and cc_select_label.txt (their
    labels, line by line), selected by the "Centrality and Consistency" classifier. A pair in the
    dataset folder or its annotations/ folder (the authors' layout) is used as it is; otherwise the
    published pair is fetched and verified (utils/storage/published.py), once the dataset folder is there."""
    need_file(root, 'Clothing1M folder')
    for folder in (root, os.path.join(root, 'annotations')):
        paths = [os.path.join(folder, name) for name in CC_SELECT]
        if all(os.path.isfile(p) for p in paths):
            return paths
    return list(cc_select_paths(inputs_dir))


def _keys_and_labels(list_path, label_path, n_class):
    """Bare keys from one file and their labels, one per line in the same order, from another."""
    keys = read_lines(list_path, 'Clothing1M subset list')
    labels = read_lines(label_path, 'Clothing1M subset labels')
    if len(keys) != len(labels):
        raise DatasetMissing(f'{list_path} lists {len(keys)} images but {label_path} holds {len(labels)} labels; '
                             f'the two files pair line by line')
    for number, (key, label) in enumerate(zip(keys, labels), 1):
        if len(key.split()) != 1:
            raise DatasetMissing(f'{list_path}, line {number}: expected one image key, found {key!r}')
        if not label.isdigit() or int(label) >= n_class:
            raise DatasetMissing(f'{label_path}, line {number}: expected a label in 0..{n_class - 1}, found {label!r}')
    return list(zip(keys, map(int, labels)))


def _listed_subset(subset_list, noisy):
    """'<key> <label>' lines, or bare keys labelled by noisy_label_kv.txt."""
    train = []
    for number, line in numbered_lines(subset_list, 'Clothing1M subset list'):
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip('-').isdigit():
            train.append((parts[0], int(parts[1])))
        elif len(parts) == 1 and parts[0] in noisy:
            train.append((parts[0], noisy[parts[0]]))
        else:
            raise DatasetMissing(f'{subset_list}, line {number}: expected "<key> <label>" or a key of '
                                 f'noisy_label_kv.txt, found {line!r}')
    return train


def read_clothing1m(root, subset_list=None, subset_labels=None):
    """Clothing1M's annotation files: noisy/clean key→label files and the train/val/test key lists.

    `subset_list` (the authors' option) names the training subset: a file of '<key> <label>' lines or
    of bare keys, labelled by `subset_labels` (one label per line, in the same order, as the authors'
    cc_select_label.txt) or, without it, by noisy_label_kv.txt."""
    noisy = _kv(os.path.join(root, 'noisy_label_kv.txt'), 'Clothing1M noisy_label_kv.txt')
    clean = _kv(os.path.join(root, 'clean_label_kv.txt'), 'Clothing1M clean_label_kv.txt')
    names = read_lines(os.path.join(root, 'category_names_eng.txt'), 'Clothing1M category_names_eng.txt')
    if subset_list and subset_labels:
        train = _keys_and_labels(subset_list, subset_labels, len(names))
    elif subset_list:
        train = _listed_subset(subset_list, noisy)
    elif subset_labels:
        raise DatasetMissing('--subset_labels pairs with --subset_list (the keys, one per line); pass both')
    else:
        keys = read_lines(os.path.join(root, 'noisy_train_key_list.txt'), 'Clothing1M noisy_train_key_list.txt')
        missing = [k for k in keys if k not in noisy]
        if missing:
            raise DatasetMissing(f'{len(missing)} keys of noisy_train_key_list.txt have no label in '
                                 f'noisy_label_kv.txt (first: {missing[0]})')
        train = [(k, noisy[k]) for k in keys]

    def clean_split(name):
        keys = read_lines(os.path.join(root, f'clean_{name}_key_list.txt'), f'Clothing1M clean_{name}_key_list.txt')
        missing = [k for k in keys if k not in clean]
        if missing:
            raise DatasetMissing(f'{len(missing)} keys of clean_{name}_key_list.txt have no label in '
                                 f'clean_label_kv.txt (first: {missing[0]})')
        return [os.path.join(root, k) for k in keys], np.asarray([clean[k] for k in keys], dtype=np.int64)
    val_paths, val_labels = clean_split('val')
    test_paths, test_labels = clean_split('test')
    return FileSplits(name='clothing1m', n_class=len(names), class_names=names,
                      train_paths=[os.path.join(root, k) for k, _ in train],
                      train_labels=np.asarray([label for _, label in train], dtype=np.int64),
                      val_paths=val_paths, val_labels=val_labels, test_paths=test_paths, test_labels=test_labels,
                      # the authors' loader normalises with Clothing1M's own statistics for every network it feeds,
                      # the fine-tuned ResNet-50 too (not ImageNet's, which the other file datasets use)
                      mean=CLOTHING1M_MEAN, std=CLOTHING1M_STD)
