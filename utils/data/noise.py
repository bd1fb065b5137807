"""Noisy training labels: published noise files, i.i.d. noise generated from clean labels, and CIFAR-N.

`--noise_type NAME` is resolved in this order:
1. a path to a `.npy` file;
2. a published name (`cifar10-1-0.35`, `cifar100-3-0.70`, `cifar10-1-0.35_U_0.3`, ...: the authors' and
   PLC's files, see utils/storage/published.py): always the published file, fetched and verified;
3. `noisy_label/NAME.npy` (e.g. `cifar10-1-0.35-s0`, PMD noise made by noisy_label/make_noise.py);
4. `<dataset>-clean`, `<dataset>-U-<rate>`, `<dataset>-A-<rate>`: clean labels, or uniform or
   asymmetric i.i.d. noise drawn from the clean labels with `--noise_seed`;
5. `<base>_U_<rate>` / `<base>_A_<rate>`: that i.i.d. noise on top of the labels `<base>` resolves to
   (the authors' hybrid naming, e.g. `cifar10-2-0.35_U_0.3`);
6. CIFAR-N human labels: `cifar10n-aggre|random1|random2|random3|worse`, `cifar100n-noisy`.
"""
import os
import re
import zlib

import numpy as np

from utils.errors import NoiseError
from utils.storage.fingerprints import git_blob_sha1_of_file
from utils.storage.loading import load_torch
from utils.storage.published import PUBLISHED, fetch, is_published

NOISE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'noisy_label')

# Classic CIFAR-10 class-dependent flips: truck→automobile, bird→airplane, cat↔dog, deer→horse.
CIFAR10_ASYMMETRIC = {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}

CIFAR_N_FILES = {'cifar10n': 'CIFAR-10_human.pt', 'cifar100n': 'CIFAR-100_human.pt'}
CIFAR_N_KEYS = {'cifar10n-aggre': 'aggre_label', 'cifar10n-random1': 'random_label1',
                'cifar10n-random2': 'random_label2', 'cifar10n-random3': 'random_label3',
                'cifar10n-worse': 'worse_label', 'cifar100n-noisy': 'noisy_label'}

_RATE = r'(0(?:\.\d+)?|1(?:\.0+)?)'
IID_NAME = re.compile(rf'^([a-z0-9]+)-([UA])-{_RATE}$')
HYBRID_NAME = re.compile(rf'^(.+)_([UA])_{_RATE}$')


# --noise_type OWN_LABELS: the dataset's own noisy labels (Food-101N, Clothing1M, WebVision, your own
# image folder), rather than noise drawn or read for a dataset with clean labels
OWN_LABELS = 'own'


def dataset_of(noise_type):
    """The dataset a noise name refers to: the part before the first '-' (cifar10n → cifar10)."""
    base = os.path.basename(noise_type).split('-')[0]
    return base[:-1] if base in CIFAR_N_FILES else base


def check_labels(labels, n_expected, n_class, source):
    """Refuse a label array of the wrong shape, dtype or range, naming the source."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n_expected:
        raise NoiseError(f'{source}: expected {n_expected} labels (one per training image), found shape '
                         f'{labels.shape}. Was it made for another dataset or split?')
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(np.isfinite(labels)) \
                and np.all(labels == np.round(labels)):
            check_label_range(labels, n_class, source)  # before the cast: 1e300 would wrap around in int64
            labels = labels.astype(np.int64)
        else:
            raise NoiseError(f'{source}: labels must be integers, found dtype {labels.dtype}')
    check_label_range(labels, n_class, source)
    if len(labels) > 1 and np.all(labels == labels[0]):  # nothing to learn from, or to retrieve
        raise NoiseError(f'{source}: all {len(labels)} labels are class {labels[0]}; a label file names the '
                         f'class of each training image, from at least two classes. Was it made for another split?')
    return labels.astype(np.int64)


def check_label_range(labels, n_class, source):
    """Refuse labels outside [0, n_class): they would crash training late, or score 0% silently."""
    labels = np.asarray(labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_class):
        raise NoiseError(f'{source}: labels must lie in [0, {n_class - 1}], found range '
                         f'[{labels.min()}, {labels.max()}]')


NPY_MAGIC = b'\x93NUMPY'
SAVE_ADVICE = 'save the labels with numpy.save(path, numpy.asarray(labels, dtype=numpy.int64))'


def load_label_file(path):
    """A noise file's label array; a missing file, or anything but a plain numeric .npy array, is named
    (with the fix)."""
    try:
        with open(path, 'rb') as f:
            head = f.read(len(NPY_MAGIC))
    except (FileNotFoundError, IsADirectoryError):  # checked with the flags (noise_problem), but gone since
        raise NoiseError(no_noise_file(path)) from None
    if head != NPY_MAGIC:
        kind = ('empty' if not head else 'a .npz archive, not a .npy array' if head.startswith(b'PK')
                else 'not a .npy array (text or another format)')
        raise NoiseError(f'noise file {path} is {kind}: {SAVE_ADVICE}')
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if 'pickle' in str(exc):  # an object array: numpy would pickle it, and we never unpickle
            raise NoiseError(f'noise file {path} holds Python objects, not integers: {SAVE_ADVICE}') from None
        raise NoiseError(f'noise file {path} is damaged ({exc}): {SAVE_ADVICE}') from None
    except (OSError, EOFError) as exc:
        raise NoiseError(f'noise file {path} is truncated or damaged ({exc}): {SAVE_ADVICE}') from None


def no_noise_file(path):
    return f'noise file {path} does not exist' + (' (it is a folder)' if os.path.isdir(path) else '')


def uniform_noise(labels, rate, n_class, rng):
    """Each label moves, with probability `rate`, to one of the other C−1 classes uniformly."""
    labels = np.asarray(labels, dtype=np.int64)
    flip = rng.random(len(labels)) < rate
    shift = rng.integers(1, n_class, size=len(labels))
    return np.where(flip, (labels + shift) % n_class, labels)


def asymmetric_map(dataset, n_class, coarse_of_class=None):
    """Class → flipped class for class-dependent noise (identity where a class does not flip)."""
    mapping = np.arange(n_class)
    if dataset == 'cifar10':
        for src, dst in CIFAR10_ASYMMETRIC.items():
            mapping[src] = dst
    elif coarse_of_class is not None:
        # the next class within each super-class, circularly
        for coarse in np.unique(coarse_of_class):
            members = np.flatnonzero(coarse_of_class == coarse)
            mapping[members] = np.roll(members, -1)
    else:
        raise NoiseError(f'asymmetric noise is defined for cifar10 and for datasets with super-classes '
                         f'(cifar100), not for {dataset}')
    return mapping


def asymmetric_noise(labels, rate, mapping, rng):
    labels = np.asarray(labels, dtype=np.int64)
    flip = rng.random(len(labels)) < rate
    return np.where(flip, mapping[labels], labels)


CIFAR_N_FIX = 'fetch it again from the CIFAR-N release (github.com/UCSC-REAL/cifar-10-100n)'


def cifar_n_file(noise_type, search_dirs):
    """The CIFAR-N label file a CIFAR-N name reads: the first of search_dirs holding it; None if none does."""
    file_name = CIFAR_N_FILES[noise_type.split('-')[0]]
    return next((os.path.join(folder, file_name) for folder in search_dirs
                 if os.path.isfile(os.path.join(folder, file_name))), None)


def cifar_n_missing(noise_type):
    return (f'{noise_type} needs {CIFAR_N_FILES[noise_type.split("-")[0]]} (CIFAR-N, Wei et al. 2022): put it in '
            f'{NOISE_DIR}/ or pass --cifar_n_dir DIR')


def load_cifar_n(noise_type, n_train, n_class, search_dirs):
    """CIFAR-N human labels for the first n_train training images (the noisy-label split), checked."""
    path = cifar_n_file(noise_type, search_dirs)
    if path is None:
        raise NoiseError(cifar_n_missing(noise_type))
    table = load_torch(path, 'CIFAR-N label file', numpy_arrays=True)
    labels = cifar_n_column(table, CIFAR_N_KEYS[noise_type], path, n_train)
    try:
        return check_labels(labels, n_train, n_class, f'{path} {CIFAR_N_KEYS[noise_type]!r}'), path
    except NoiseError as exc:  # its message names the problem; the fix for this file is a fresh copy
        raise NoiseError(f'{exc}; {CIFAR_N_FIX}') from None


def cifar_n_column(table, key, path, n_train):
    """The first n_train labels under `key` of a CIFAR-N table (a dict of one label array per labelling,
    each covering all 50k training images), or a refusal naming the file: anything else in it would
    fail inside numpy or sorted() with a traceback instead."""
    if not isinstance(table, dict) or not all(isinstance(k, str) for k in table):
        raise NoiseError(f'{path} is not a CIFAR-N label file (a dict of label arrays named by strings); '
                         f'{CIFAR_N_FIX}')
    if key not in table:
        raise NoiseError(f'{path} has no {key!r}; keys are {sorted(table)}; {CIFAR_N_FIX}')
    try:
        labels = np.asarray(table[key])
    except (TypeError, ValueError, OverflowError) as exc:  # a ragged list, or integers beyond int64
        raise NoiseError(f'{path}: {key!r} is not an array of labels ({str(exc).splitlines()[0]}); '
                         f'{CIFAR_N_FIX}') from None
    if labels.ndim != 1 or len(labels) < n_train:
        found = f'a value of type {type(table[key]).__name__}' if labels.ndim == 0 else f'shape {labels.shape}'
        raise NoiseError(f'{path}: {key!r} must hold one label per training image (at least {n_train}), found '
                         f'{found}; {CIFAR_N_FIX}')
    return labels[:n_train]


def published_noise_file(noise_type, noise_dir=NOISE_DIR, inputs_dir=None):
    """The fetched, verified published file of a published noise name. Another file of that name in
    noise_dir is refused: a published name always means the published file."""
    local = os.path.join(noise_dir, noise_type + '.npy')
    if os.path.isfile(local) and git_blob_sha1_of_file(local) != PUBLISHED[noise_type].blob:
        raise NoiseError(f'{local} is named like the published {noise_type} but is another file; rename it '
                         f'(files made here end in -s<seed>) or delete it: {noise_type} means the published file')
    return fetch(noise_type, inputs_dir)


def resolve_noisy_labels(noise_type, n, clean_labels, n_class, seed=0, coarse_of_class=None,
                         noise_dir=NOISE_DIR, cifar_n_dirs=(), inputs_dir=None):
    """Noisy labels for the n training samples and a short description of where they came from.

    `clean_labels` (None where unknown) is the base of generated noise; `inputs_dir` is where
    published files are kept (utils/storage/published.py).
    """
    stored = stored_labels(noise_type, n, n_class, noise_dir, cifar_n_dirs, inputs_dir)
    if stored is not None:
        return stored
    return generated_labels(noise_type, n, clean_labels, n_class, seed, coarse_of_class, noise_dir, cifar_n_dirs,
                            inputs_dir)


def names_a_file(noise_type):
    """Whether --noise_type is a label file's path rather than a noise name."""
    return noise_type.endswith('.npy') or os.sep in noise_type


# the in-memory datasets whose names begin noise names (cifar10-1-0.35, cifar100n-noisy, digits-U-0.4)
NAMED_DATASETS = ('cifar10', 'cifar100', 'digits')


def noise_dataset_problem(noise_type, dataset):
    """Why a noise name made for another dataset (cifar100-U-0.4 on CIFAR-10, CIFAR-10N on the digits) cannot
    label `dataset`'s training images (None where it can): its labels would be cut to this training set, or
    drawn over classes it does not have. A file is checked by its length and classes instead."""
    if names_a_file(noise_type):
        return None
    made_for, dataset = dataset_of(noise_type), dataset_of(dataset)  # digits-sub200 (a test's subset): digits
    if made_for in NAMED_DATASETS and dataset in NAMED_DATASETS and made_for != dataset:
        return (f'--noise_type {noise_type} is a noise of {made_for}, and this run trains on {dataset}: '
                f'name a {dataset} noise (e.g. {dataset}-U-0.4), or train on {made_for}')
    return None


def noise_kind(noise_type, noise_dir=NOISE_DIR):
    """Which kind of the module docstring's list --noise_type names, in the order they are tried: 'path',
    'published', 'noise file' (noise_dir/NAME.npy), 'cifar-n', 'clean', 'iid' or 'hybrid'; None for
    none of them. The one place that order is decided: resolving and the up-front check both ask it."""
    if names_a_file(noise_type):
        return 'path'
    if is_published(noise_type):
        return 'published'
    if os.path.isfile(os.path.join(noise_dir, noise_type + '.npy')):
        return 'noise file'
    if noise_type in CIFAR_N_KEYS:
        return 'cifar-n'
    return generated_kind(noise_type)


def generated_kind(noise_type):
    """'clean', 'iid' or 'hybrid' for the names of labels drawn here (whatever files exist), else None."""
    if noise_type == f'{dataset_of(noise_type)}-clean':
        return 'clean'
    if IID_NAME.match(noise_type):
        return 'iid'
    return 'hybrid' if HYBRID_NAME.match(noise_type) else None


def noise_problem(noise_type, noise_dir=NOISE_DIR, cifar_n_dirs=()):
    """Why --noise_type names no labels that can be read or drawn (None where it does), known before any
    data is read: a missing file, an unknown name, a CIFAR-N file not found, a hybrid's base that is none
    of these. What needs the data (a file's length, the dataset's clean labels) is checked with it."""
    kind = noise_kind(noise_type, noise_dir)
    if kind == 'path' and not os.path.isfile(noise_type):
        return no_noise_file(noise_type)
    if kind == 'cifar-n' and cifar_n_file(noise_type, [noise_dir, *cifar_n_dirs]) is None:
        return cifar_n_missing(noise_type)
    if kind == 'hybrid':  # drawn on its base's labels: the base is checked, and named as the hybrid's
        base = HYBRID_NAME.match(noise_type).group(1)
        problem = noise_problem(base, noise_dir, cifar_n_dirs)
        return problem and f'{noise_type} adds noise to {base}, and {problem}'
    return unknown_noise(noise_type, noise_dir) if kind is None else None


def unknown_noise(noise_type, noise_dir):
    dataset = dataset_of(noise_type)
    return (f'unknown --noise_type {noise_type!r}: no file {os.path.join(noise_dir, noise_type + ".npy")}, and not '
            f'a generated name ({dataset}-U-0.4, {dataset}-A-0.3, <name>_U_0.3, {dataset}-clean) or a CIFAR-N name '
            f'({", ".join(CIFAR_N_KEYS)}) or a published name (`python -m noisy_label.fetch --help` lists them). '
            f'Other PMD files are made by `python -m noisy_label.make_noise pmd`.')


def stored_labels(noise_type, n, n_class, noise_dir, cifar_n_dirs, inputs_dir):
    """(labels, source) read from a file: a path, a published name, noisy_label/NAME.npy or a CIFAR-N
    name; None where the name is none of these (then it names generated noise)."""
    kind = noise_kind(noise_type, noise_dir)
    if kind == 'path':
        return check_labels(load_label_file(noise_type), n, n_class, noise_type), f'file {noise_type}'
    if kind == 'published':
        path = published_noise_file(noise_type, noise_dir, inputs_dir)
        return check_labels(load_label_file(path), n, n_class, path), f'published file {path}'
    if kind == 'noise file':
        path = os.path.join(noise_dir, noise_type + '.npy')
        return check_labels(load_label_file(path), n, n_class, path), f'file {path}'
    if kind == 'cifar-n':
        labels, source = load_cifar_n(noise_type, n, n_class, [noise_dir, *cifar_n_dirs])
        return labels, f'CIFAR-N {source}'
    return None


def generated_labels(noise_type, n, clean_labels, n_class, seed, coarse_of_class, noise_dir, cifar_n_dirs,
                     inputs_dir):
    """(labels, source) drawn here: <dataset>-clean, or uniform/asymmetric noise on the clean labels
    or on the labels of another noise name (a hybrid, <name>_U_0.3)."""
    dataset = dataset_of(noise_type)
    # Seeded by name too, so a hybrid's layer of noise is independent of its base's draws.
    rng = np.random.default_rng([seed, zlib.crc32(noise_type.encode())])
    kind = generated_kind(noise_type)
    if kind == 'clean':
        if clean_labels is None:
            raise NoiseError(f'{dataset} has no clean training labels')
        return np.asarray(clean_labels, dtype=np.int64), 'clean labels'
    if kind not in ('iid', 'hybrid'):
        raise NoiseError(unknown_noise(noise_type, noise_dir))
    base, letter, rate = (IID_NAME if kind == 'iid' else HYBRID_NAME).match(noise_type).groups()
    if kind == 'iid':
        if clean_labels is None:
            raise NoiseError(f'{noise_type} is drawn from clean labels, which {dataset} does not have')
        base_labels, base_source = np.asarray(clean_labels, dtype=np.int64), 'clean labels'
    else:
        base_labels, base_source = resolve_noisy_labels(base, n, clean_labels, n_class, seed, coarse_of_class,
                                                        noise_dir, cifar_n_dirs, inputs_dir)
    rate = float(rate)
    if letter == 'U':
        labels = uniform_noise(base_labels, rate, n_class, rng)
    else:
        labels = asymmetric_noise(base_labels, rate, asymmetric_map(dataset, n_class, coarse_of_class), rng)
    name = 'uniform' if letter == 'U' else 'asymmetric'
    return labels, f'{name} {rate} on {base_source} (seed {seed})'


def noise_rate(noisy, clean):
    return float(np.mean(np.asarray(noisy) != np.asarray(clean)))
