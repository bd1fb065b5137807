"""Precomputed f_p features read from a file: `--fp_encoder features --fp_checkpoint FILE`.

The file is an .npz with one 2-D float array per split (`train`, `val`, `test`), rows in the
dataset's order (CIFAR: the 45k noisy-training images, the 5k validation images, the 10k test
images), plus `meta`: a JSON string recording what made them. It is read with allow_pickle=False.
Any model's embeddings can be used this way; `python -m benchmarks.extract_features` writes one.
A file whose splits, row counts or widths do not fit the dataset is refused.
"""
import json
import os

import numpy as np
import torch

from utils.encoders.base import FrozenEncoder
from utils.errors import FeatureFileError, first_few
from utils.storage.fingerprints import file_digest

SPLITS = ('train', 'val', 'test')
FIX = 'write an .npz with float arrays train, val, test (rows in the dataset\'s order), e.g. with ' \
      '`python -m benchmarks.extract_features`'


def save_feature_file(path, arrays, meta):
    """Write the splits' features and a JSON record of what made them."""
    np.savez(path, **{s: np.asarray(arrays[s], dtype=np.float32) for s in SPLITS},
             meta=np.array(json.dumps(meta)))


def file_sha1(path):
    return file_digest(path, 'sha1')


def _read_npz(path):
    if not os.path.isfile(path):
        raise FeatureFileError(f'features file {path} not found: pass --fp_checkpoint PATH of an existing .npz')
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except Exception as exc:  # not a zip, damaged, or object arrays (which would need unpickling)
        raise FeatureFileError(f'features file {path} could not be read as an .npz of plain arrays '
                               f'({str(exc)[:200]}); {FIX}') from exc


def load_feature_file(path):
    """{split: float32 array} and the meta record, after checking the splits agree with each other."""
    blob = _read_npz(path)
    if any(name.endswith('data.pkl') for name in blob):  # a zip, as torch.save writes
        raise FeatureFileError(f'{path} is a torch checkpoint (weights, or a run\'s best.pt), not an .npz of features: '
                               f'pass an encoder file with its own --fp_encoder (e.g. SimCLR), or {FIX}')
    missing = [s for s in SPLITS if s not in blob]
    if missing:
        names = sorted(blob)
        raise FeatureFileError(f'features file {path} lacks the split(s) {", ".join(missing)} '
                               f'(it has: {first_few(names, 5) or "nothing"}); {FIX}')
    arrays = {}
    for split in SPLITS:
        a = blob[split]
        if a.ndim != 2 or a.dtype.kind not in 'fiu' or 0 in a.shape:
            raise FeatureFileError(f'features file {path}: split {split} is {a.dtype} of shape {a.shape}, not a '
                                   f'non-empty 2-D numeric array (rows × feature dim); {FIX}')
        if not np.isfinite(a).all():
            raise FeatureFileError(f'features file {path}: split {split} holds NaN or infinite values; '
                                   f'recompute the features')
        with np.errstate(over='ignore'):
            arrays[split] = a.astype(np.float32)  # what training reads: checked again after the cast
        if not np.isfinite(arrays[split]).all():
            raise FeatureFileError(f'features file {path}: split {split} holds values beyond float32\'s range '
                                   f'(|x| > {np.finfo(np.float32).max:.3g}), which become infinite in training; '
                                   f'rescale or recompute the features')
    widths = {s: a.shape[1] for s, a in arrays.items()}
    if len(set(widths.values())) > 1:
        raise FeatureFileError(f'features file {path}: the splits have different feature widths {widths}; {FIX}')
    meta = blob.get('meta')
    return arrays, str(meta) if meta is not None else ''


class FeatureFileEncoder(FrozenEncoder):
    """An f_p 'encoder' that looks its features up in a file instead of computing them. Its
    fingerprint is the file's content hash, so caches built on other features are never reused."""
    name = 'features'

    def __init__(self, path):
        super().__init__()
        self.path = os.path.abspath(path)
        self.arrays, self.meta = load_feature_file(path)
        self.dim = self.arrays['train'].shape[1]
        self.bf16 = False

    def finish(self, device):
        self.eval()
        self.fingerprint = file_sha1(self.path)[:16]
        self.source = self.path
        return self.to(device)

    def describe(self):
        return {**super().describe(), 'file_sha1': self.fingerprint, 'meta': self.meta}

    def split_rows(self, split, n):
        """The rows of `split`, refused unless the dataset's split has exactly as many images."""
        if split not in self.arrays:
            raise FeatureFileError(f'features file {self.path} has no split {split!r}; {FIX}')
        rows = self.arrays[split]
        if len(rows) != n:
            raise FeatureFileError(f'features file {self.path}: split {split} has {len(rows)} rows but the dataset '
                                   f'has {n} images there; extract the features from this dataset and split ({FIX})')
        return torch.from_numpy(rows).to(self.device)

    def encode(self, images):
        raise FeatureFileError(f'--fp_encoder features reads the rows of {self.path} for the dataset\'s splits '
                               f'only and cannot encode other images; use an image encoder (e.g. CLIP) for them')


def load_feature_encoder(path, device='cpu'):
    if not path:
        raise FeatureFileError('--fp_encoder features needs --fp_checkpoint FILE (an .npz with float arrays '
                               'train, val, test, one row per image in the dataset\'s order)')
    return FeatureFileEncoder(path).finish(device)
