"""Food-101N in its official layout (Food-101N_release/), tested on Food-101's test split."""
import os

import numpy as np

from utils.data.image_files import read_lines
from utils.data.splits import FileSplits
from utils.errors import DatasetMissing


def read_food101n(food101n_root, food101_root):
    """Food-101N_release: images/<class>/<key>.jpg listed in meta/imagelist.tsv, noisy label = class
    folder; meta/verified_val.tsv entries verified correct (label 1) form the clean validation split
    and are held out of training. Food-101: meta/test.txt, images/<class>/<id>.jpg, is the test split."""
    classes = read_lines(os.path.join(food101n_root, 'meta', 'classes.txt'), 'Food-101N class list')
    if classes and classes[0] == 'class_name':
        classes = classes[1:]
    index = {c: i for i, c in enumerate(classes)}
    keys = read_lines(os.path.join(food101n_root, 'meta', 'imagelist.tsv'), 'Food-101N image list')
    keys = keys[1:] if keys and keys[0].startswith('class_name') else keys
    verified = read_lines(os.path.join(food101n_root, 'meta', 'verified_val.tsv'), 'Food-101N verified_val.tsv')
    val_keys = [line.split('\t')[0] for line in verified[1:] if line.split('\t')[-1] == '1']
    held_out = set(val_keys)

    def label_of(key, source):
        cls = key.split('/')[0]
        if cls not in index:
            raise DatasetMissing(f'{source}: class {cls!r} of {key!r} is not in meta/classes.txt')
        return index[cls]
    train_keys = [k for k in keys if k not in held_out]
    image_dir = os.path.join(food101n_root, 'images')
    test_ids = read_lines(os.path.join(food101_root, 'meta', 'test.txt'), 'Food-101 test list')
    return FileSplits(
        name='food101n', n_class=len(classes), class_names=classes,
        train_paths=[os.path.join(image_dir, k) for k in train_keys],
        train_labels=np.asarray([label_of(k, 'imagelist.tsv') for k in train_keys], dtype=np.int64),
        val_paths=[os.path.join(image_dir, k) for k in val_keys],
        val_labels=np.asarray([label_of(k, 'verified_val.tsv') for k in val_keys], dtype=np.int64),
        test_paths=[os.path.join(food101_root, 'images', i + '.jpg') for i in test_ids],
        test_labels=np.asarray([label_of(i, 'Food-101 test.txt') for i in test_ids], dtype=np.int64),
        resample='bicubic')
