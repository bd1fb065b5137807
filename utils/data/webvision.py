"""WebVision 1.0 (Google subset, first 50 classes), tested on the ILSVRC2012 validation images of those
classes (utils/data/ilsvrc.py reads their label files)."""
import os

import numpy as np

from utils.data import ilsvrc
from utils.data.image_files import need_file, read_lines, read_pairs
from utils.data.splits import FileSplits
from utils.errors import DatasetMissing, SetupError
from utils.storage.published import fetch

# WebVision 1.0 has 1000 classes (ILSVRC2012's); the paper's mini-WebVision is its first 50
WEBVISION_CLASSES = 1000


def check_n_class(n_class):
    """--n_class before any work: one class cannot be classified (its checkpoint is refused after
    training), and none or a negative count keeps no training image at all."""
    if not 2 <= n_class <= WEBVISION_CLASSES:
        raise SetupError(f'--n_class {n_class}: WebVision trains on its first N classes, 2 <= N <= '
                         f'{WEBVISION_CLASSES}; pass --n_class 50 (the paper\'s mini-WebVision) or another N in '
                         f'that range')


def check_listed_classes(n_class, labels, path):
    """--n_class within the classes the training list names: a class without a training image could
    never be predicted, and a mini-WebVision list names only the first 50."""
    listed = int(labels.max()) + 1 if len(labels) else 0
    if n_class > listed:
        raise SetupError(f'--n_class {n_class}, but {path} names only {listed} classes (labels 0-{listed - 1}); '
                         f'pass --n_class {listed} or less, or point --webvision_root at a WebVision with more classes')


def read_webvision(root, imagenet_val_root, n_class=50, val_labels=None, inputs_dir=None):
    """info/train_filelist_google.txt (training, noisy), info/val_filelist.txt with val_images_256/
    (validation: model selection), and the ILSVRC2012 validation images of the same classes (test):
    in class-index folders <c>/, WordNet-id folders <wnid>/ mapped by info/synsets.txt, or the official
    flat folder with its label file (utils/data/ilsvrc.py: `val_labels`, else one of a known name beside
    it, else the authors' published ILSVRC2012_val_label.txt, fetched and verified)."""
    check_n_class(n_class)
    train_list = os.path.join(root, 'info', 'train_filelist_google.txt')
    train_paths, train_labels = read_pairs(train_list, 'WebVision info/train_filelist_google.txt', root)
    check_listed_classes(n_class, train_labels, train_list)
    val_paths, val_labels_ = read_pairs(os.path.join(root, 'info', 'val_filelist.txt'), 'WebVision info/val_filelist.txt',
                                    os.path.join(root, 'val_images_256'))
    keep = train_labels < n_class
    train_paths, train_labels = [p for p, k in zip(train_paths, keep) if k], train_labels[keep]
    keep = val_labels_ < n_class
    val_paths, val_labels_ = [p for p, k in zip(val_paths, keep) if k], val_labels_[keep]
    test_paths, test_labels, notes = _ilsvrc_test_split(root, imagenet_val_root, n_class, val_labels, inputs_dir)
    return FileSplits(name='webvision', n_class=n_class, train_paths=train_paths, train_labels=train_labels,
                      val_paths=val_paths, val_labels=val_labels_, test_paths=test_paths,
                      test_labels=np.asarray(test_labels, dtype=np.int64), notes=notes,
                      resample='bicubic', test_resample='bilinear')  # the ILSVRC2012 loader's torchvision Resize


def _webvision_synsets(root):
    return [line.split()[0] for line in read_lines(os.path.join(root, 'info', 'synsets.txt'), 'WebVision info/synsets.txt')]


def _ilsvrc_test_split(root, imagenet_val_root, n_class, label_file, inputs_dir):
    """(paths, labels, notes) of the ILSVRC2012 validation images of the first n_class classes."""
    need_file(imagenet_val_root, 'ILSVRC2012 validation folder')
    folders = {d for d in os.listdir(imagenet_val_root) if os.path.isdir(os.path.join(imagenet_val_root, d))}
    flat = ilsvrc.flat_image_folder(imagenet_val_root)
    if label_file and flat is None:
        raise DatasetMissing(f'--imagenet_val_labels {label_file} labels a flat folder of ILSVRC2012_val_*.JPEG '
                             f'images, but {imagenet_val_root} holds none; drop the flag or point '
                             f'--imagenet_val_root at the images')
    if all(str(c) in folders for c in range(n_class)):
        class_dirs = [str(c) for c in range(n_class)]
    elif flat is not None and not set(_webvision_synsets(root)[:n_class]) <= folders:
        synsets = _webvision_synsets(root)
        label_file = label_file or ilsvrc.find_label_file(flat, imagenet_val_root) or fetch('ILSVRC2012_val_label',
                                                                                           inputs_dir)
        paths, labels, form = ilsvrc.flat_validation(flat, need_file(label_file, 'ILSVRC2012 validation labels'), synsets,
                                                     n_class)
        return paths, labels, {'test_labels': f'{label_file} ({form})'}
    else:
        synsets = _webvision_synsets(root)[:n_class]
        missing = [s for s in synsets if s not in folders]
        if missing:
            raise DatasetMissing(f'{imagenet_val_root} lacks class folders for {len(missing)} of the first '
                                 f'{n_class} WebVision classes (first: {missing[0]}), and holds no flat '
                                 f'ILSVRC2012_val_*.JPEG images')
        class_dirs = synsets
    test_paths, test_labels = [], []
    for c, folder in enumerate(class_dirs):
        names = sorted(os.listdir(os.path.join(imagenet_val_root, folder)))
        test_paths += [os.path.join(imagenet_val_root, folder, n) for n in names]
        test_labels += [c] * len(names)
    return test_paths, test_labels, {}
