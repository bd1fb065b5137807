"""Your own images with noisy labels: a CSV of path,label or a folder of class folders.

Labels are checked before any work: a single class, an index out of range or mixed with names, a name
listed twice in --classes are refused naming the label and row; a class far smaller than the rest or a
label that looks like a typo of another is named in a warning that says how to pin the class list.
"""
import csv
import io
import os
import re
import unicodedata

import numpy as np

from utils.data.image_files import (IMAGE_SUFFIXES, check_images, image_files_in, is_image_name, need_file, read_lines,
                                   read_text)
from utils.data.splits import FileSplits
from utils.errors import DatasetMissing, first_few


def _class_names(folder):
    """The class folders of `folder`, sorted; refused where there are none, or where images lie beside them
    (outside any class folder they have no label, and would be left out unsaid)."""
    names = sorted(os.listdir(need_file(folder, 'image folder')))
    classes = [d for d in names if os.path.isdir(os.path.join(folder, d))]
    if not classes:
        raise DatasetMissing(f'{folder} holds no class folders; put the images in {folder}/<class name>/ '
                             f'or pass a CSV of path,label')
    loose = [n for n in names if is_image_name(n) and os.path.isfile(os.path.join(folder, n))]
    if loose:
        raise DatasetMissing(f'{folder} holds {len(loose)} image{"s" if len(loose) > 1 else ""} beside its class '
                             f'folders ({first_few(loose)}), which no class folder labels; move each into the folder '
                             f'of its class, or out of {folder}')
    return classes


def _class_folders(folder):
    """{class name: sorted image paths} of a folder of class folders."""
    return {c: image_files_in(os.path.join(folder, c)) for c in _class_names(folder)}


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
        if 'path' in header and [c.strip().lower() for c in row] == header:  # two CSVs joined with `cat`, say
            raise DatasetMissing(f'{path}, row {number}: the header again ({",".join(row)!r}); keep one header, '
                                 f'on the first row')
        if len(row) <= max(columns) or not row[columns[0]].strip() or not row[columns[1]].strip():
            raise DatasetMissing(f'{path}, row {number}: expected "<image path>,<label>", found {",".join(row)!r}')
        if '\0' in row[columns[0]]:  # no file system takes one (os calls raise ValueError on it)
            raise DatasetMissing(f'{path}, row {number}: the image path {row[columns[0]]!r} holds a NUL character; '
                                 f'fix the path')
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
        classes = read_lines(classes_file, 'class list', 'Give --classes a text file of the class names, one a line.')
        seen = {}
        for index, name in enumerate(classes):
            if name in seen:
                raise DatasetMissing(f'--classes {classes_file} lists {name!r} twice (as classes {seen[name]} and '
                                     f'{index}, counting from 0); list each class once')
            seen[name] = index
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
    if used[-1] + 1 > len(used):  # refused here, before 0..max is listed: codes like 310000000 filled memory
        raise DatasetMissing(f'{source}: class {str(gap)!r} has no training images ({used[-1] + 1 - len(used)} empty '
                             f'classes among the indices 0..{used[-1]}); number the classes 0, 1, 2, ..., or {PIN}')
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


OWN_DATA_FIX = 'Give {} a folder of class folders or a CSV of path,label rows (the README\'s "Your own data").'
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
        if counts[a] > counts[b]:  # the smaller class is the one that looks like the typo
            a, b = b, a
        log(f'warning: {source}: class {classes[a]!r} ({_images(counts[a])}) looks like a typo of {classes[b]!r} '
            f'({_images(counts[b])}); if they are one class, fix the labels, or {PIN}')


def _images(n):
    return f'{n} image' + ('' if n == 1 else 's')


def _normal(name):
    """The name as compared for typos: one Unicode form (a folder 'café' written decomposed, as some file
    systems store names, prints as the composed one), case, spacing and punctuation left out."""
    return re.sub(r'[\W_]+', '', unicodedata.normalize('NFKC', name).casefold())


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
    train_paths, train_text, train_where = _labelled(need_file(train, 'training images', OWN_DATA_FIX.format('--train')))
    if not train_paths:
        raise DatasetMissing(f'{train} lists no training images ({", ".join(IMAGE_SUFFIXES)} files in class folders, '
                             f'or CSV rows of path,label)')
    classes = _class_list(train, train_text, train_where, classes_file)
    broken = [name for name in classes if any(c in name for c in '\n\r')]
    if broken:  # classes.txt (one name a line) and --classes could not give it back
        raise DatasetMissing(f'{train}: the class name {broken[0]!r} holds a line break; rename that class folder or '
                             f'label')
    train_labels = _label_indices(train_text, train_where, classes, train, classes_file)
    if len(classes) < 2:
        raise DatasetMissing(f'{train} has {"a single class " + repr(classes[0]) if classes else "no class"}; learning '
                             f'which labels are wrong needs at least two classes: add the images of the others')
    empty = [name for c, name in enumerate(classes) if not np.any(train_labels == c)]
    if empty:
        raise DatasetMissing(f'{train}: class {empty[0]!r} has no training images ({len(empty)} empty '
                             f'class{"es" if len(empty) > 1 else ""}); '
                             f'add images or remove the class')
    if not classes_file:
        warn_about_classes(classes, train_labels, train, log)
    splits = {'train': (train_paths, train_labels)}
    for name, source in (('val', val), ('test', test)):
        if source:
            paths, text, where = _labelled(need_file(source, f'{name} images', OWN_DATA_FIX.format(f'--{name}')))
            splits[name] = paths, _label_indices(text, where, classes, source, classes_file)
    _refuse_duplicates(splits)
    for name, (paths, _) in splits.items():
        source = {'train': train, 'val': val, 'test': test}[name]
        check_images(paths, source, listed=os.path.isfile(source))
    notes = {}
    if val is None:
        keep, held = _carve_validation(train_labels, val_fraction, seed)
        splits['val'] = [train_paths[i] for i in held], train_labels[held]
        splits['train'] = [train_paths[i] for i in keep], train_labels[keep]
        notes['model_selection'] = (f'on noisy labels: no clean validation split was given, so {len(held)} training '
                                    f'images ({val_fraction:.0%} per class, seed {seed}) were held out with their '
                                    f'noisy labels; pass --val for clean model selection')
        # trained on by no run, they are in no label ranking: said, with the command that labels them
        notes['held_out'] = (f'the {len(held)} held-out images are not in train_label_ranking.csv; python predict.py '
                             f'RUN --split val labels them (predict_val.csv)')
    if test is None:
        splits['test'] = splits['val']
        notes['test_split'] = 'none given: test_acc is measured on the validation split'
    return FileSplits(name='imagefolder', n_class=len(classes), class_names=classes, notes=notes,
                      noisy_val=val is None, upright=True,
                      **{f'{s}_{part}': splits[s][i] for s in ('train', 'val', 'test')
                         for i, part in enumerate(('paths', 'labels'))})


def _refuse_duplicates(splits):
    """A path twice in a split, or in two splits (an image tested on would then be trained on); a file
    reached by two paths through links (a linked class folder: one image, two classes) likewise."""
    seen, first = {}, {}
    for name, (paths, _) in splits.items():
        for path in paths:
            key = os.path.normcase(os.path.normpath(os.path.abspath(path)))
            if key in seen:
                where = f'twice in {name}' if seen[key] == name else f'in both {seen[key]} and {name}'
                raise DatasetMissing(f'{path} is listed {where}; list every image once, in one split')
            seen[key] = name
            _refuse_linked_twice(first, path, name)


def _refuse_linked_twice(first, path, split):
    """Record `path` under the file it is (`first`: {(device, inode): (path, split)}: a symbolic link and a
    hard link alike); refused where another listed path is that same file. A path that cannot be
    stat'ed is left to check_images, which names it."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return
    if (st.st_dev, st.st_ino) in first:
        other, other_split = first[st.st_dev, st.st_ino]
        where = f'in {split}' if other_split == split else f'in {other_split} and {split}'
        raise DatasetMissing(f'{other} and {path} ({where}) are one file, {os.path.realpath(path)}, reached through '
                             f'a link (symbolic or hard); list every image once: remove the linked folder or file, '
                             f'or the link')
    first[st.st_dev, st.st_ino] = path, split
