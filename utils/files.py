"""Image-file datasets: Food-101N, Clothing1M, WebVision 1.0 in their official layouts, and a
researcher's own images (a CSV of path,label or class folders).

Images stay on disk; they are decoded once, in DataLoader workers, to compute the cached features
that training then runs on (utils/distributed.py shards that work across processes).
"""
import csv
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import numpy as np
import torch
from PIL import Image

from utils.data import IMAGENET_MEAN, IMAGENET_STD, DatasetMissing
from utils import ilsvrc
from utils.published import cc_select_paths, fetch

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')


@dataclass
class FileSplits:
    """Noisy-label training files, clean validation and test files, labels as int64 arrays; the
    interface of ImageSplits (utils/data.py), with file paths as each split's source."""
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
    resample: str = 'bilinear'  # the filter that resizes its images, as the authors' loader of it does

    def paths(self, split):
        return getattr(self, f'{split}_paths')

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


def _need(path, what):
    if not os.path.exists(path):
        raise DatasetMissing(f'{what} not found: {path}. Download the dataset and point the script at its folder.')
    return path


def read_text(path, what):
    """A text file's content, refused naming the file and line where it is not UTF-8 (a BOM is dropped)."""
    with open(_need(path, what), 'rb') as f:
        data = f.read()
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b'\n') + 1
        raise DatasetMissing(f'{path}, row {line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); '
                             f'save the file as UTF-8 (e.g. "CSV UTF-8" in a spreadsheet)') from None


def _lines(path, what):
    return [line.strip() for line in read_text(path, what).splitlines() if line.strip()]


def _pairs(path, what, root=None):
    """'<relative path> <int label>' lines → (absolute paths, labels); malformed lines are named."""
    paths, labels = [], []
    for number, line in enumerate(_lines(path, what), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
            raise DatasetMissing(f'{path}, line {number}: expected "<image path> <label>", found {line!r}')
        paths.append(os.path.join(root, parts[0]) if root else parts[0])
        labels.append(int(parts[1]))
    return paths, np.asarray(labels, dtype=np.int64)


# ---- Food-101N (training, noisy) + Food-101 (test) -----------------------------------------------

def read_food101n(food101n_root, food101_root):
    """Food-101N_release: images/<class>/<key>.jpg listed in meta/imagelist.tsv, noisy label = class
    folder; meta/verified_val.tsv entries verified correct (label 1) form the clean validation split
    and are held out of training. Food-101: meta/test.txt, images/<class>/<id>.jpg, is the test split."""
    classes = _lines(os.path.join(food101n_root, 'meta', 'classes.txt'), 'Food-101N class list')
    if classes and classes[0] == 'class_name':
        classes = classes[1:]
    index = {c: i for i, c in enumerate(classes)}
    keys = _lines(os.path.join(food101n_root, 'meta', 'imagelist.tsv'), 'Food-101N image list')
    keys = keys[1:] if keys and keys[0].startswith('class_name') else keys
    verified = _lines(os.path.join(food101n_root, 'meta', 'verified_val.tsv'), 'Food-101N verified_val.tsv')
    val_keys = [line.split('\t')[0] for line in verified[1:] if line.split('\t')[-1] == '1']
    held_out = set(val_keys)

    def label_of(key, source):
        cls = key.split('/')[0]
        if cls not in index:
            raise DatasetMissing(f'{source}: class {cls!r} of {key!r} is not in meta/classes.txt')
        return index[cls]
    train_keys = [k for k in keys if k not in held_out]
    image_dir = os.path.join(food101n_root, 'images')
    test_ids = _lines(os.path.join(food101_root, 'meta', 'test.txt'), 'Food-101 test list')
    return FileSplits(
        name='food101n', n_class=len(classes), class_names=classes,
        train_paths=[os.path.join(image_dir, k) for k in train_keys],
        train_labels=np.asarray([label_of(k, 'imagelist.tsv') for k in train_keys], dtype=np.int64),
        val_paths=[os.path.join(image_dir, k) for k in val_keys],
        val_labels=np.asarray([label_of(k, 'verified_val.tsv') for k in val_keys], dtype=np.int64),
        test_paths=[os.path.join(food101_root, 'images', i + '.jpg') for i in test_ids],
        test_labels=np.asarray([label_of(i, 'Food-101 test.txt') for i in test_ids], dtype=np.int64),
        resample='bicubic')


# ---- Clothing1M ----------------------------------------------------------------------------------

def _kv(path, what):
    return {p: l for p, l in zip(*_pairs(path, what))}


CC_SELECT = ('cc_select_img.txt', 'cc_select_label.txt')


def cc_select_files(root, inputs_dir=None):
    """The authors' Clothing1M training subset: cc_select_img.txt (keys) and cc_select_label.txt (their
    labels, line by line), selected by the "Centrality and Consistency" classifier. A pair in the
    dataset folder or its annotations/ folder (the authors' layout) is used as it is; otherwise the
    published pair is fetched and verified (utils/published.py), once the dataset folder is there."""
    _need(root, 'Clothing1M folder')
    for folder in (root, os.path.join(root, 'annotations')):
        paths = [os.path.join(folder, name) for name in CC_SELECT]
        if all(os.path.isfile(p) for p in paths):
            return paths
    return list(cc_select_paths(inputs_dir))


def _keys_and_labels(list_path, label_path, n_class):
    """Bare keys from one file and their labels, one per line in the same order, from another."""
    keys = _lines(list_path, 'Clothing1M subset list')
    labels = _lines(label_path, 'Clothing1M subset labels')
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
    for number, line in enumerate(_lines(subset_list, 'Clothing1M subset list'), 1):
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
    names = _lines(os.path.join(root, 'category_names_eng.txt'), 'Clothing1M category_names_eng.txt')
    if subset_list and subset_labels:
        train = _keys_and_labels(subset_list, subset_labels, len(names))
    elif subset_list:
        train = _listed_subset(subset_list, noisy)
    elif subset_labels:
        raise DatasetMissing('--subset_labels pairs with --subset_list (the keys, one per line); pass both')
    else:
        keys = _lines(os.path.join(root, 'noisy_train_key_list.txt'), 'Clothing1M noisy_train_key_list.txt')
        missing = [k for k in keys if k not in noisy]
        if missing:
            raise DatasetMissing(f'{len(missing)} keys of noisy_train_key_list.txt have no label in '
                                 f'noisy_label_kv.txt (first: {missing[0]})')
        train = [(k, noisy[k]) for k in keys]

    def clean_split(name):
        keys = _lines(os.path.join(root, f'clean_{name}_key_list.txt'), f'Clothing1M clean_{name}_key_list.txt')
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
                      val_paths=val_paths, val_labels=val_labels, test_paths=test_paths, test_labels=test_labels)


# ---- WebVision 1.0 (Google subset, first 50 classes) ---------------------------------------------

def read_webvision(root, imagenet_val_root, n_class=50, val_labels=None, inputs_dir=None):
    """info/train_filelist_google.txt (training, noisy), info/val_filelist.txt with val_images_256/
    (validation: model selection), and the ILSVRC2012 validation images of the same classes (test):
    in class-index folders <c>/, WordNet-id folders <wnid>/ mapped by info/synsets.txt, or the official
    flat folder with its label file (utils/ilsvrc.py: `val_labels`, else one of a known name beside
    it, else the authors' published ILSVRC2012_val_label.txt, fetched and verified)."""
    train_paths, train_labels = _pairs(os.path.join(root, 'info', 'train_filelist_google.txt'),
                                       'WebVision info/train_filelist_google.txt', root)
    val_paths, val_labels_ = _pairs(os.path.join(root, 'info', 'val_filelist.txt'), 'WebVision info/val_filelist.txt',
                                    os.path.join(root, 'val_images_256'))
    keep = train_labels < n_class
    train_paths, train_labels = [p for p, k in zip(train_paths, keep) if k], train_labels[keep]
    keep = val_labels_ < n_class
    val_paths, val_labels_ = [p for p, k in zip(val_paths, keep) if k], val_labels_[keep]
    test_paths, test_labels, notes = _ilsvrc_test_split(root, imagenet_val_root, n_class, val_labels, inputs_dir)
    return FileSplits(name='webvision', n_class=n_class, train_paths=train_paths, train_labels=train_labels,
                      val_paths=val_paths, val_labels=val_labels_, test_paths=test_paths,
                      test_labels=np.asarray(test_labels, dtype=np.int64), resample='bicubic', notes=notes)


def _webvision_synsets(root):
    return [line.split()[0] for line in _lines(os.path.join(root, 'info', 'synsets.txt'), 'WebVision info/synsets.txt')]


def _ilsvrc_test_split(root, imagenet_val_root, n_class, label_file, inputs_dir):
    """(paths, labels, notes) of the ILSVRC2012 validation images of the first n_class classes."""
    _need(imagenet_val_root, 'ILSVRC2012 validation folder')
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
        paths, labels, form = ilsvrc.flat_validation(flat, _need(label_file, 'ILSVRC2012 validation labels'), synsets,
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


# ---- your own data: a CSV of path,label or class folders -----------------------------------------

def _image_files(folder):
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                  if name.lower().endswith(IMAGE_SUFFIXES))


def _class_names(folder):
    classes = sorted(d for d in os.listdir(_need(folder, 'image folder')) if os.path.isdir(os.path.join(folder, d)))
    if not classes:
        raise DatasetMissing(f'{folder} holds no class folders; put the images in {folder}/<class name>/ '
                             f'or pass a CSV of path,label')
    return classes


def _class_folders(folder):
    """{class name: sorted image paths} of a folder of class folders."""
    return {c: _image_files(os.path.join(folder, c)) for c in _class_names(folder)}


def _csv_rows(path):
    """(absolute path, label text, row number) of a CSV with columns path,label (header optional);
    relative paths are relative to the CSV's folder."""
    reader = csv.reader(io.StringIO(read_text(path, 'label CSV'), newline=''))
    rows = [(reader.line_num, r) for r in reader if any(cell.strip() for cell in r)]
    header = [c.strip().lower() for c in rows[0][1]] if rows else []
    columns = (0, 1)
    if 'path' in header:
        if 'label' not in header:
            raise DatasetMissing(f'{path}: the header names no "label" column; expected the columns path,label')
        columns = header.index('path'), header.index('label')
        rows = rows[1:]
    folder, found = os.path.dirname(os.path.abspath(path)), []
    for number, row in rows:
        if len(row) <= max(columns) or not row[columns[0]].strip() or not row[columns[1]].strip():
            raise DatasetMissing(f'{path}, row {number}: expected "<image path>,<label>", found {",".join(row)!r}')
        found.append((os.path.join(folder, row[columns[0]].strip()), row[columns[1]].strip(), number))
    return found


def _labelled(source):
    """(paths, label texts, where each label stands: 'row N' of a CSV, or its class folder) of a CSV
    file or a folder of class folders."""
    if os.path.isfile(source):
        rows = _csv_rows(source)
        return [p for p, _, _ in rows], [label for _, label, _ in rows], [f'row {n}' for _, _, n in rows]
    paths, labels, where = [], [], []
    for name, files in _class_folders(source).items():
        paths += files
        labels += [name] * len(files)
        where += [f'folder {name}'] * len(files)
    return paths, labels, where


INDEX = re.compile(r'-?[0-9]+')
PIN = 'pass --classes FILE (one class name per line, in index order) to fix the class list'


def _is_index(label):
    return INDEX.fullmatch(label) is not None


def _class_list(train_source, train_labels, where, classes_file):
    """The class names: --classes FILE, the training class folders, the CSV's names (sorted), or 0..max
    for a CSV of indices (a label far above the rest is refused as out of range rather than making
    empty classes); a CSV mixing names and indices is refused."""
    if classes_file:
        classes = _lines(classes_file, 'class list')
        seen = {}
        for number, name in enumerate(classes, 1):
            if name in seen:
                raise DatasetMissing(f'--classes {classes_file} lists {name!r} twice (names {seen[name]} and '
                                     f'{number}); list each class once')
            seen[name] = number
        return classes
    if os.path.isdir(train_source):
        return _class_names(train_source)
    kinds = [_is_index(label) for label in train_labels]
    if any(kinds) and not all(kinds):
        first_index, first_name = kinds.index(True), kinds.index(False)
        raise DatasetMissing(f'{train_source} mixes class indices and class names ({where[first_index]}: '
                             f'{train_labels[first_index]!r}, {where[first_name]}: {train_labels[first_name]!r}); '
                             f'use one kind, or {PIN}')
    if all(kinds):
        return [str(c) for c in range(_index_count(train_source, train_labels, where))]
    return sorted(set(train_labels))


def _index_count(source, labels, where):
    """The number of classes a CSV of index labels makes, 0..max; a label below 0, or above a missing
    index with fewer images than those below it (a stray label, not a class), is out of range."""
    values = [int(label) for label in labels]
    for value, at in zip(values, where):
        if value < 0:
            raise DatasetMissing(f'{source}, {at}: index label {value} is out of range: class indices count from 0')
    used = sorted(set(values))
    gap = next((i for i, v in enumerate(used) if v != i), len(used))  # the first index without images
    above = [(at, v) for at, v in zip(where, values) if v > gap]
    if above and 2 * len(above) < len(values):
        at, value = above[0]
        raise DatasetMissing(f'{source}, {at}: index label {value} is out of range: the labels below it run '
                             f'0..{gap - 1} (class {gap} has no images); fix the label, or {PIN}')
    return used[-1] + 1


def _label_indices(labels, where, classes, source, classes_file):
    """Label texts (class names, or with --classes indices into its lines) → int64 indices; a label
    that is no class is refused naming it and its row."""
    index = {name: c for c, name in enumerate(classes)}
    out = []
    for label, at in zip(labels, where):
        c = index.get(label)
        if c is None and _is_index(label):
            if not classes_file and not all(_is_index(name) for name in classes):
                raise DatasetMissing(f'{source}, {at}: label {label!r} is an index, but the classes are names '
                                     f'({", ".join(classes[:5])}{" ..." if len(classes) > 5 else ""}); write the '
                                     f'class name, or {PIN}')
            if not 0 <= int(label) < len(classes):
                raise DatasetMissing(f'{source}, {at}: index label {label} is out of range: there are {len(classes)} '
                                     f'classes (0..{len(classes) - 1}); fix the label, or {PIN}')
            c = int(label)
        if c is None:
            raise DatasetMissing(f'{source}, {at}: label {label!r} is not a known class (classes: '
                                 f'{", ".join(classes[:10])}{" ..." if len(classes) > 10 else ""}); fix the '
                                 f'label or list the class in --classes')
        out.append(c)
    return np.asarray(out, dtype=np.int64)


SMALL_CLASS = 0.1  # a class with at most this share of the median class's images is named in a warning


def warn_about_classes(classes, labels, source, log):
    """Name classes that look like mistakes of the labels rather than classes: one far smaller than the
    rest (a stray label), one whose name looks like a typo of another's (case, spacing, a letter)."""
    counts = np.bincount(labels, minlength=len(classes))
    median = float(np.median(counts))
    small = [c for c in range(len(classes)) if counts[c] <= SMALL_CLASS * median]
    if small:
        named = ', '.join(f'{classes[c]!r} ({_images(counts[c])})' for c in small[:5])
        log(f'warning: {source}: {len(small)} class(es) far smaller than the rest (median {median:g} images): '
            f'{named}{" ..." if len(small) > 5 else ""}; if a stray label made them, fix it, or {PIN}')
    for a, b in _typo_pairs(classes):
        log(f'warning: {source}: class {classes[a]!r} ({_images(counts[a])}) looks like a typo of {classes[b]!r} '
            f'({_images(counts[b])}); if they are one class, fix the labels, or {PIN}')


def _images(n):
    return f'{n} image' + ('' if n == 1 else 's')


def _normal(name):
    return re.sub(r'[\W_]+', '', name.casefold())


def _typo_pairs(classes):
    """Pairs of class indices whose names differ only in case, spacing or punctuation, or by one edit:
    two neighbouring letters swapped, or (names of five letters or more) one letter changed, added or
    dropped. Names that differ in digits only (class1, class2) are numbered classes, not typos."""
    pairs, normal = [], [_normal(name) for name in classes]
    for a in range(len(classes)):
        for b in range(a + 1, len(classes)):
            na, nb = normal[a], normal[b]
            if re.sub('[0-9]', '', na) == re.sub('[0-9]', '', nb) and na != nb:
                continue
            edit = _one_edit(na, nb)
            if na == nb or edit == 'swap' or (edit and min(len(na), len(nb)) >= 5):
                pairs.append((a, b))
    return pairs


def _one_edit(a, b):
    """'swap' where b is a with two neighbouring letters swapped, 'edit' where one letter is changed,
    added or dropped, else None."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return None
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if len(a) == len(b):
        if a[start + 1:] == b[start + 1:]:
            return 'edit'
        swapped = a[:start] + a[start + 1:start + 2] + a[start] + a[start + 2:]
        return 'swap' if swapped == b else None
    shorter, longer = (a, b) if len(a) < len(b) else (b, a)
    return 'edit' if shorter[start:] == longer[start + 1:] else None


def _unreadable(path, exc):
    """Why an image cannot be decoded, and the fix: an oversized image is named as such."""
    if isinstance(exc, Image.DecompressionBombError):
        return (f'{path} is too large to decode safely ({exc}); shrink it, or remove it from the list (raise '
                f'PIL.Image.MAX_IMAGE_PIXELS only for files you trust)')
    return f'{path} ({exc})'


UNDECODABLE = (OSError, ValueError, Image.DecompressionBombError)


def _readable(path):
    try:
        with Image.open(path) as image:
            image.size  # the header parses
        return None
    except UNDECODABLE as exc:
        return _unreadable(path, exc)


def open_image(path):
    """An image file as RGB, or a refusal naming the file (missing, damaged, not an image, oversized)."""
    try:
        with Image.open(path) as image:
            return image.convert('RGB')
    except UNDECODABLE as exc:
        raise DatasetMissing(f'cannot read image {_unreadable(path, exc)}; replace the file or remove it from the '
                             f'list') from None


def _check_images(paths, source):
    """Every file exists and its header is an image (checked in threads: file systems are slow)."""
    with ThreadPoolExecutor(16) as pool:
        bad = [b for b in pool.map(_readable, paths, chunksize=256) if b]
    if bad:
        raise DatasetMissing(f'{source}: {len(bad)} of {len(paths)} images cannot be read (first: {bad[0]}); '
                             f'remove them from the list or replace the files')


def _carve_validation(labels, fraction, seed):
    """Indices (train, val): `fraction` of each class held out at random (seeded), at least one image
    of each class kept for training."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        val += members[:min(round(fraction * len(members)), len(members) - 1)].tolist()
    if not val:
        raise DatasetMissing(f'--val_fraction {fraction} holds out no training image; raise it or pass a clean '
                             f'validation split with --val')
    val = np.sort(np.asarray(val))
    return np.setdiff1d(np.arange(len(labels)), val), val


def read_image_folder(train, val=None, test=None, classes_file=None, val_fraction=0.1, seed=0, log=print):
    """Your own images: `train` is a CSV of path,label (the noisy labels) or a folder of class folders;
    `val` and `test` (clean labels) likewise, or None. Without `val`, a seeded `val_fraction` of the
    training images is held out as validation, with its noisy labels; without `test`, the test split
    is the validation split. Refused with the problem named: unreadable images, unknown, out-of-range
    or mixed labels, a class listed twice, a single class or one without training images, a path listed
    twice (within or across splits). Without --classes, a class far smaller than the rest or named like
    a typo of another is warned about (`log`)."""
    train_paths, train_text, train_where = _labelled(_need(train, 'training images'))
    if not train_paths:
        raise DatasetMissing(f'{train} lists no training images ({", ".join(IMAGE_SUFFIXES)} files in class folders, '
                             f'or CSV rows of path,label)')
    classes = _class_list(train, train_text, train_where, classes_file)
    train_labels = _label_indices(train_text, train_where, classes, train, classes_file)
    if len(classes) < 2:
        raise DatasetMissing(f'{train} has {"a single class " + repr(classes[0]) if classes else "no class"}; learning '
                             f'which labels are wrong needs at least two classes: add the images of the others')
    empty = [name for c, name in enumerate(classes) if not np.any(train_labels == c)]
    if empty:
        raise DatasetMissing(f'{train}: class {empty[0]!r} has no training images ({len(empty)} empty classes); '
                             f'add images or remove the class')
    if not classes_file:
        warn_about_classes(classes, train_labels, train, log)
    splits = {'train': (train_paths, train_labels)}
    for name, source in (('val', val), ('test', test)):
        if source:
            paths, text, where = _labelled(_need(source, f'{name} images'))
            splits[name] = paths, _label_indices(text, where, classes, source, classes_file)
    _refuse_duplicates(splits)
    for name, (paths, _) in splits.items():
        _check_images(paths, {'train': train, 'val': val, 'test': test}[name])
    notes = {}
    if val is None:
        keep, held = _carve_validation(train_labels, val_fraction, seed)
        splits['val'] = [train_paths[i] for i in held], train_labels[held]
        splits['train'] = [train_paths[i] for i in keep], train_labels[keep]
        notes['model_selection'] = (f'on noisy labels: no clean validation split was given, so {len(held)} training '
                                    f'images ({val_fraction:.0%} per class, seed {seed}) were held out with their '
                                    f'noisy labels; pass --val for clean model selection')
    if test is None:
        splits['test'] = splits['val']
        notes['test_split'] = 'none given: test_acc is measured on the validation split'
    return FileSplits(name='imagefolder', n_class=len(classes), class_names=classes, notes=notes,
                      noisy_val=val is None,
                      **{f'{s}_{part}': splits[s][i] for s in ('train', 'val', 'test')
                         for i, part in enumerate(('paths', 'labels'))})


def _refuse_duplicates(splits):
    """A path twice in a split, or in two splits (an image tested on would then be trained on)."""
    seen = {}
    for name, (paths, _) in splits.items():
        for path in paths:
            key = os.path.normcase(os.path.normpath(os.path.abspath(path)))
            if key in seen:
                where = f'twice in {name}' if seen[key] == name else f'in both {seen[key]} and {name}'
                raise DatasetMissing(f'{path} is listed {where}; list every image once, in one split')
            seen[key] = name


# ---- decoding --------------------------------------------------------------------------------------

KEYS_VIEW_EPOCH = 2 ** 31  # the random stream of the one augmented view cached as f_p keys
# PIL's filters (antialiased when shrinking): torchvision's Resize on Clothing1M, their own bicubic
# resize on WebVision and Food-101N
RESAMPLE = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}


@dataclass(frozen=True)
class Decoding:
    """How an image file becomes pixels: its shorter side resized to size·256/224 with the `resample`
    filter (RESAMPLE), then cropped to size × size."""
    size: int = 224
    resample: str = 'bilinear'

    def key(self):
        """Its part of a feature cache's key; bilinear resizing is left out, so caches made before
        the filter was a choice stay valid."""
        return {'size': self.size, **({'resample': self.resample} if self.resample != 'bilinear' else {})}


class ImageFiles(torch.utils.data.Dataset):
    """Decode, resize the shorter side to size·256/224 and crop to size: uint8 3×size×size.

    The crop is central; with `augment=(seed, epoch)` it is the training view instead (the authors'
    Resize(256), RandomCrop(224), RandomHorizontalFlip at size 224): a random crop and a coin-flip
    mirror drawn from (seed, epoch, index), so a resumed epoch decodes the very same views. `index`
    counts from `first`: a shard of the files (a torchrun rank's) draws what the whole list would. The
    one view cached as f_p keys (`--fp_cache_view augmented`) is drawn as epoch KEYS_VIEW_EPOCH, which
    no run reaches. Size and resize filter come from `decoding` (Decoding)."""

    def __init__(self, paths, decoding=Decoding(), augment=None, first=0):
        self.paths, self.size, self.augment, self.first = paths, decoding.size, augment, first
        self.resample = RESAMPLE[decoding.resample]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = open_image(self.paths[i])
        short = round(self.size * 256 / 224)
        w, h = image.size
        scale = short / min(w, h)
        image = image.resize((max(short, round(w * scale)), max(short, round(h * scale))), self.resample)
        w, h = image.size
        left, top, flip = (w - self.size) // 2, (h - self.size) // 2, False
        if self.augment is not None:
            rng = np.random.default_rng((*self.augment, self.first + i))
            left, top = int(rng.integers(0, w - self.size + 1)), int(rng.integers(0, h - self.size + 1))
            flip = bool(rng.integers(0, 2))
        image = image.crop((left, top, left + self.size, top + self.size))
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def _loader(dataset, num_workers, **order):
    return torch.utils.data.DataLoader(dataset, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                                       persistent_workers=False, prefetch_factor=4 if num_workers else None, **order)


def image_batches(paths, batch_size, num_workers, decoding=Decoding(), augment=None, first=0):
    """uint8 batches of the files in order (centre crops, or the views `augment` draws for files
    numbered from `first`), decoded by DataLoader workers."""
    return _loader(ImageFiles(paths, decoding, augment, first), num_workers, batch_size=batch_size,
                   shuffle=False)


def training_view_batches(paths, batches, seed, epoch, num_workers, decoding=Decoding()):
    """uint8 training views of the files, one batch per entry of `batches` (lists of row indices), in
    that order: the epoch's augmented images, decoded by DataLoader workers while the device trains."""
    return _loader(ImageFiles(paths, decoding, augment=(seed, epoch)), num_workers,
                   batch_sampler=batches)
