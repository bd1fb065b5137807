"""On-disk caches of f_p features and neighbour tables.

A cache file stores its key (encoder, weights fingerprint, dataset, split, view, image
fingerprint, precision). A file whose key differs, or that cannot be read, is rebuilt with a
message: a cache from another configuration is never silently reused.
"""
import hashlib
import json
import os

import numpy as np
import torch

from utils.encoders import encode_all
from utils.io import load_torch, save_torch
from utils.retrieval import knn

CACHE_FORMAT = 1


def tensor_fingerprint(tensor):
    """sha1 of a tensor's bytes (150 MB for CIFAR's 45k images: a fraction of a second)."""
    data = tensor.detach().cpu().contiguous().view(torch.uint8).numpy()
    return hashlib.sha1(np.ascontiguousarray(data).tobytes()).hexdigest()[:16]


def _key_hash(key):
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _load_matching(path, key, what, log):
    """The cached tensor if `path` holds one made with `key`; None (with a message) otherwise."""
    if not os.path.isfile(path):
        return None
    try:
        blob = load_torch(path, what)
    except RuntimeError as exc:
        log(f'{exc}; rebuilding')
        return None
    if not isinstance(blob, dict) or blob.get('key') != key:
        log(f'{what} {path} was made with another configuration; rebuilding')
        return None
    return blob['value']


def cached_features(encoder, images, dataset, split, cache_dir, view='clean', batch_size=512, log=print):
    """f_p features of `images`, computed once per (encoder, weights, dataset, split, view)."""
    key = {'format': CACHE_FORMAT, 'kind': 'features', 'encoder': encoder.name, 'preprocess': encoder.describe(),
           'source': str(getattr(encoder, 'source', '')), 'weights': encoder.fingerprint,
           'dataset': dataset, 'split': split, 'view': view, 'n': len(images),
           'images': tensor_fingerprint(images), 'bf16': bool(encoder.bf16 and encoder.device.type == 'cuda')}
    path = os.path.join(cache_dir, f'{dataset}_{split}_{view}_{encoder.name}_{_key_hash(key)}.pt')
    value = _load_matching(path, key, 'feature cache', log)
    if value is not None and value.shape == (len(images), encoder.dim) and torch.isfinite(value).all():
        return value.to(encoder.device)
    features = encode_all(encoder, images, batch_size=batch_size, desc=f'f_p {split}')
    if not torch.isfinite(features).all():
        raise FloatingPointError(f'{encoder.name} produced non-finite features for {dataset}/{split}; '
                                 f'try --precision fp32')
    save_torch({'key': key, 'value': features.cpu()}, path)
    return features


def cached_neighbours(features, k, cache_dir, log=print):
    """The k nearest training samples of every training sample (itself included), cached."""
    key = {'format': CACHE_FORMAT, 'kind': 'neighbours', 'k': k, 'features': tensor_fingerprint(features),
           'n': features.shape[0]}
    path = os.path.join(cache_dir, f'neighbours_k{k}_{_key_hash(key)}.pt')
    value = _load_matching(path, key, 'neighbour cache', log)
    if value is not None and value.shape == (features.shape[0], k) \
            and int(value.min()) >= 0 and int(value.max()) < features.shape[0]:
        return value.to(features.device)
    _, idx = knn(features, features, k, progress=True)
    save_torch({'key': key, 'value': idx.cpu()}, path)
    return idx
