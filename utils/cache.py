"""On-disk caches of f_p features and neighbour tables.

A cache file stores its key (encoder, weights fingerprint, dataset, split, view, image
fingerprint, precision) and a hash of its content. A file whose key differs, whose content no
longer matches its hash (altered in place), or that cannot be read or is refused as unsafe, is
rebuilt with a message: a cache from another configuration is never silently reused.
"""
import hashlib
import json
import os

import numpy as np
import torch

from utils.augment import random_crop_flip
from utils.encoders import encode_all
from utils.io import load_torch, save_torch
from utils.retrieval import knn

CACHE_FORMAT = 2  # 2: a content hash beside the key


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
    value = blob.get('value')
    if not isinstance(value, torch.Tensor) or blob.get('content') != tensor_fingerprint(value):
        log(f'{what} {path} does not match its content hash (altered or damaged); rebuilding')
        return None
    return value


def _store(value, key, path):
    save_torch({'key': key, 'value': value, 'content': tensor_fingerprint(value)}, path)


def feature_key(encoder, dataset, split, view, n, content):
    """What decides a feature cache: encoder, its weights and preprocessing, the data, the precision."""
    return {'format': CACHE_FORMAT, 'kind': 'features', 'encoder': encoder.name, 'preprocess': encoder.describe(),
            'source': str(getattr(encoder, 'source', '')), 'weights': encoder.fingerprint,
            'dataset': dataset, 'split': split, 'view': view, 'n': n, 'content': content,
            'bf16': bool(encoder.bf16 and encoder.device.type == 'cuda')}


def feature_path(cache_dir, key):
    return os.path.join(cache_dir, f"{key['dataset']}_{key['split']}_{key['view']}_{key['encoder']}_{_key_hash(key)}.pt")


def load_features(encoder, key, cache_dir, log=print):
    """The cached features for `key`, or None when absent, from another configuration, or damaged."""
    value = _load_matching(feature_path(cache_dir, key), key, 'feature cache', log)
    if value is not None and value.shape == (key['n'], encoder.dim) and torch.isfinite(value).all():
        return value.to(encoder.device)
    return None


def store_features(features, key, cache_dir, encoder):
    if not torch.isfinite(features).all():
        raise FloatingPointError(f"{encoder.name} produced non-finite features for {key['dataset']}/{key['split']}; "
                                 f'try --precision fp32')
    _store(features.cpu(), key, feature_path(cache_dir, key))


def cached_features(encoder, images, dataset, split, cache_dir, view='clean', seed=0, batch_size=512, log=print):
    """f_p features of in-memory `images`, computed once per (encoder, weights, dataset, split, view).

    view 'augmented' encodes one random crop + flip of every image, drawn from `seed` (the authors
    cached their CIFAR training keys from one augmented view); 'clean' encodes the images as they are.
    """
    if hasattr(encoder, 'split_features'):  # a features file: its rows are the features already
        return encoder.split_features(split, len(images))
    view_name = f'augmented-s{seed}' if view == 'augmented' else view
    key = feature_key(encoder, dataset, split, view_name, len(images), tensor_fingerprint(images))
    features = load_features(encoder, key, cache_dir, log)
    if features is None:
        if view == 'augmented':
            images = augmented_view(images, seed)
        features = encode_all(encoder, images, batch_size=batch_size, desc=f'{encoder.name} {split} ({view})')
        store_features(features, key, cache_dir, encoder)
    return features


def augmented_view(images, seed, chunk=4096):
    """One seeded random crop + flip of every image, in chunks (the gather's index tensors are 8 bytes a
    pixel), on the CPU so the draw is the same on any device."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([random_crop_flip(images[i:i + chunk].cpu(), generator=g) for i in range(0, len(images), chunk)])


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
    _store(idx.cpu(), key, path)
    return idx


def paths_fingerprint(paths):
    return hashlib.sha1('\n'.join(paths).encode()).hexdigest()[:16]


@torch.no_grad()
def encode_files(encoders, paths, batch_size, num_workers, size, desc):
    """Every encoder's features of the files, decoding each image once."""
    from tqdm import tqdm
    from utils.files import image_batches
    outs = [[] for _ in encoders]
    for batch in tqdm(image_batches(paths, batch_size, num_workers, size), desc=desc, leave=False):
        for out, encoder in zip(outs, encoders):
            out.append(encoder.encode(batch.to(encoder.device, non_blocking=True)))
    return [torch.cat(o) if o else torch.empty(0, e.dim, device=e.device) for o, e in zip(outs, encoders)]


def cached_file_features(encoders, paths, dataset, split, cache_dir, batch_size=256, num_workers=4, size=224,
                         log=print):
    """Features of image files for several encoders, cached like `cached_features`.

    Under torchrun each rank encodes a contiguous shard and writes it as a part file; rank 0
    assembles the parts, in order, into the one cache file every rank then reads.
    """
    from utils import distributed
    keys = [feature_key(e, dataset, split, 'center', len(paths), paths_fingerprint(paths)) for e in encoders]
    found = [load_features(e, k, cache_dir, log) for e, k in zip(encoders, keys)]
    todo = [i for i, f in enumerate(found) if f is None]
    distributed.barrier()  # every rank has looked before anyone writes
    if todo:
        rank, world = distributed.rank(), distributed.world_size()
        shard = np.array_split(np.arange(len(paths)), world)[rank]
        parts = encode_files([encoders[i] for i in todo], [paths[j] for j in shard], batch_size, num_workers,
                              size, f'features {split}' + (f' (rank {rank}/{world})' if world > 1 else ''))
        if world == 1:
            for i, part in zip(todo, parts):
                store_features(part, keys[i], cache_dir, encoders[i])
                found[i] = part
        else:
            for i, part in zip(todo, parts):
                save_torch(part.cpu(), feature_path(cache_dir, keys[i]) + f'.part{rank}of{world}')
            distributed.barrier()
            if rank == 0:
                for i in todo:
                    base = feature_path(cache_dir, keys[i])
                    names = [base + f'.part{r}of{world}' for r in range(world)]
                    store_features(torch.cat([load_torch(n, 'feature part') for n in names]), keys[i], cache_dir,
                                   encoders[i])
                    for n in names:
                        os.remove(n)
            distributed.barrier()
            for i in todo:
                found[i] = load_features(encoders[i], keys[i], cache_dir, log)
    return found
