"""On-disk caches of f_p features and neighbour tables.

A cache file stores its key (encoder, weights fingerprint, dataset, split, view, image
fingerprint, precision) and a hash of its content (bytes, dtype and shape). Images held in memory enter the key by their
bytes; image files by what they are on disk, files_fingerprint: each file's path within the folder its
list shares, size and modification time in nanoseconds, so an image rewritten in place is never served
from a cache of the old one, and a dataset moved, named by another path, or copied keeping its times
(cp -a, rsync -a) is served its features (as a resume goes on with it); the bytes of three of them
(sampled_files_digest) tell apart folders that agree in all that. A file whose key differs, whose content no
longer matches its hash (altered in place), or that cannot be read or is refused as unsafe, is
rebuilt with a message: a cache from another configuration is never silently reused.
"""
import os

import numpy as np
import torch

from utils.data.image_files import Decoding, image_batches
from utils.data.images import random_crop_flip
from utils.encoders.base import FrozenEncoder, encode_all
from utils.errors import RefusedByOneRank
from utils.runtime import distributed
from utils.storage.fingerprints import (files_fingerprint, key_fingerprint, sampled_files_digest, tensor_fingerprint,
                                        within_common_folder)
from utils.storage.loading import load_torch
from utils.storage.saving import save_torch

CACHE_FORMAT = 3  # 2: a content hash beside the key; 3: the hash covers the dtype and shape


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
    if not isinstance(value, torch.Tensor) or blob.get('content') != content_hash(value):
        log(f'{what} {path} does not match its content hash (altered or damaged); rebuilding')
        return None
    return value


def _store(value, key, path):
    save_torch({'key': key, 'value': value, 'content': content_hash(value)}, path)


def content_hash(value):
    """A cached tensor's bytes with their dtype and shape: the same bytes read as another dtype or shape (a
    file's tensor header edited) are features of another meaning, not the ones cached."""
    return f'{value.dtype}/{list(value.shape)}/{tensor_fingerprint(value)}'


def argument_identity(value):
    """What one argument of a cached computation contributes to its key: tensors and path lists by
    content, encoders by name, weights, preprocessing and precision, anything else as it is."""
    if isinstance(value, torch.Tensor):
        return {'tensor': tensor_fingerprint(value), 'shape': list(value.shape)}
    if isinstance(value, FrozenEncoder):
        return {'encoder': value.name, 'preprocess': value.describe(), 'source': str(getattr(value, 'source', '')),
                'weights': value.fingerprint, 'bf16': bool(value.bf16 and value.device.type == 'cuda')}
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return {'files': files_fingerprint(value, within_common_folder(value)), 'n': len(value),
                'sampled': sampled_files_digest(value)}
    return value


def computation_key(compute, arguments):
    """The key of `compute(**arguments)`, derived from those very arguments: a new argument of a cached
    computation changes its key by construction."""
    version = f"@{compute.version}" if hasattr(compute, 'version') else ''  # a computation whose value changed
    name = getattr(compute, 'cache_name', f'{compute.__module__}.{compute.__qualname__}')
    return {'format': CACHE_FORMAT, 'computation': f'{name}{version}',
            **{name: argument_identity(value) for name, value in sorted(arguments.items())}}


def cache_path(cache_dir, label, key):
    return os.path.join(cache_dir, f'{label}_{key_fingerprint(key)}.pt')


def cached(compute, arguments, cache_dir, label, valid=lambda value: True, log=print, **settings):
    """`compute(**arguments, **settings)`, computed once and kept in cache_dir under a key made of the
    arguments; `settings` change how it is computed, not the value (batch sizes). A stored value that
    is damaged, altered or fails `valid` is recomputed. With several ranks, rank 0 looks first and computes
    what is missing; the others then read what it stored (one computation, one writer of the file)."""
    key = computation_key(compute, arguments)
    path = cache_path(cache_dir, label, key)
    with distributed.main_first():
        value = _load_matching(path, key, f'{label} cache', log)
        if value is not None:
            if valid(value):
                return value
            log(f'{label} cache {path} does not fit what it stands for (its dtype, shape or values); rebuilding')
        value = compute(**arguments, **settings)
        _store(value.cpu(), key, path)
        return value


def finite_features(features, encoder, what):
    if not torch.isfinite(features).all():
        raise FloatingPointError(f'{encoder.name} produced non-finite features for {what}; try --precision fp32')
    return features


def encode_view(encoder, images, view, seed, batch_size=512):
    """f_p features of in-memory images: as they are ('clean'), or of one random crop + flip of each,
    drawn from `seed` ('augmented': the authors cached their CIFAR training keys from one such view)."""
    if view == 'augmented':
        images = augmented_view(images, seed)
    features = encode_all(encoder, images, batch_size, desc=f'{encoder.name} ({view})')
    return finite_features(features, encoder, f'the {view} view')


def features_fit(value, encoder, n):
    """A stored feature tensor is usable: one finite float32 row (as encode_all makes them) of the encoder's
    width per image. A file's content hash does not tell a forged one: its writer can hash it too."""
    return value.dtype == torch.float32 and value.shape == (n, encoder.dim) and bool(torch.isfinite(value).all())


def cached_features(encoder, images, dataset, split, cache_dir, view='clean', seed=0, batch_size=512, log=print):
    """f_p features of in-memory `images`, computed once per (encoder, images, view, seed of the view)."""
    if hasattr(encoder, 'split_rows'):  # a features file: its rows are the features already
        return encoder.split_rows(split, len(images))
    arguments = dict(encoder=encoder, images=images, view=view, seed=seed if view == 'augmented' else None)
    valid = lambda f: features_fit(f, encoder, len(images))  # noqa: E731
    return cached(encode_view, arguments, cache_dir, f'{dataset}_{split}_{view}_{encoder.name}', valid, log,
                  batch_size=batch_size).to(encoder.device)


# The names the caches of these computations were keyed by before their modules moved: kept, so the
# feature caches of earlier runs stay valid (a cache key names what was computed, not where the code lives).
encode_view.cache_name = 'utils.cache.encode_view'


def augmented_view(images, seed, chunk=4096):
    """One seeded random crop + flip of every image, in chunks (the gather's index tensors are 8 bytes a
    pixel), on the CPU so the draw is the same on any device."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([random_crop_flip(images[i:i + chunk].cpu(), generator=g) for i in range(0, len(images), chunk)])


@torch.no_grad()
def encode_files(encoders, paths, batch_size, num_workers, decoding, desc, augment=None, first=0):
    """Every encoder's features of the files, each image decoded once as `decoding` says (the centre
    crop, or with `augment` the seeded view, utils/data/image_files.ImageFiles; `first`: the number of the first
    file)."""
    from utils.runtime.progress import progress_bar

    outs = [[] for _ in encoders]
    batches = image_batches(paths, batch_size, num_workers, decoding, augment, first)
    for batch in progress_bar(batches, desc=desc, leave=False):
        for out, encoder in zip(outs, encoders):
            out.append(encoder.encode(batch.to(encoder.device, non_blocking=True)))
    return [torch.cat(o) if o else torch.empty(0, e.dim, device=e.device) for o, e in zip(outs, encoders)]


def encode_file_view(encoder, paths, size, augment=None, resample='bilinear', upright=False, rounding='legacy'):
    """What a file-feature cache holds: `encoder`'s features of the files decoded, resized and
    centre-cropped to `size`, or cropped as the training view `augment` draws (computed by
    encode_files, several encoders per decoding). Its arguments are a cache key's: Decoding.key()
    leaves out the defaults (the legacy rounding among them)."""
    return encode_files([encoder], paths, 256, 0, Decoding(size, resample, upright, rounding), 'features', augment)[0]


encode_file_view.cache_name = 'utils.cache.encode_file_view'  # its cache key's name before the module moved


def load_file_features(encoder, key, label, cache_dir, n, log):
    value = _load_matching(cache_path(cache_dir, label, key), key, f'{label} cache', log)
    if value is not None and features_fit(value, encoder, n):
        return value.to(encoder.device)
    return None


def cached_file_features(encoders, paths, dataset, split, cache_dir, decoding, batch_size=256, num_workers=4,
                         log=print, augment=None):
    """Features of image files for several encoders, cached like `cached_features`: of the centre
    crops, or of the one training view `augment` draws for each image.

    Under torchrun each rank encodes a contiguous shard and writes it as a part file; rank 0
    assembles the parts, in order, into the one cache file every rank then reads.
    """
    # the centre crops' key leaves out `augment`, so caches made before it existed stay valid
    view = {**({'augment': list(augment)} if augment is not None else {}), **decoding.key()}
    files = argument_identity(paths)  # one stat of every file, whatever the number of encoders
    keys = [{**computation_key(encode_file_view, dict(encoder=e, **view)), 'paths': files} for e in encoders]
    labels = [f'{dataset}_{split}_{"center" if augment is None else "augmented"}_{e.name}' for e in encoders]
    found = [load_file_features(e, k, label, cache_dir, len(paths), log) for e, k, label in zip(encoders, keys, labels)]
    # what to encode is rank 0's finding, for every rank (each encodes a shard of it: a rank deciding alone
    # would wait for the others at a part file they never write); all have looked before anyone writes
    todo = distributed.broadcast_object([i for i, f in enumerate(found) if f is None])
    for i in set(range(len(encoders))) - set(todo):
        if found[i] is None:  # rank 0 found it valid: so must this rank
            found[i] = load_file_features(encoders[i], keys[i], labels[i], cache_dir, len(paths), log)
            if found[i] is None:
                raise RefusedByOneRank(f'rank {distributed.rank()} cannot read the {labels[i]} cache that rank 0 '
                                       f'read in {cache_dir}: give every process the same --cache_dir on one file '
                                       f'system')
    if todo:
        rank, world = distributed.rank(), distributed.world_size()
        shard = np.array_split(np.arange(len(paths)), world)[rank]
        parts = encode_files([encoders[i] for i in todo], [paths[j] for j in shard], batch_size, num_workers,
                              decoding, f'features {split}' + (f' (rank {rank}/{world})' if world > 1 else ''),
                              augment, int(shard[0]) if len(shard) else 0)
        bases = {i: cache_path(cache_dir, labels[i], keys[i]) for i in todo}
        if world == 1:
            for i, part in zip(todo, parts):
                _store(finite_features(part, encoders[i], split).cpu(), keys[i], bases[i])
                found[i] = part
        else:
            join_shards(dict(zip(todo, parts)), bases, encoders, keys, split)
            for i in todo:
                found[i] = load_file_features(encoders[i], keys[i], labels[i], cache_dir, len(paths), log)
    return found


def join_shards(parts, bases, encoders, keys, split):
    """Under torchrun: each rank writes its shard of every encoder's features (`parts`, by encoder
    index) as a part file; rank 0 joins them in rank order into the cache file at `bases[i]`."""
    rank, world = distributed.rank(), distributed.world_size()
    for i, part in parts.items():
        save_torch(part.cpu(), bases[i] + f'.part{rank}of{world}')
    distributed.barrier()
    if rank == 0:
        for i in parts:
            names = [bases[i] + f'.part{r}of{world}' for r in range(world)]
            whole = torch.cat([load_torch(n, 'feature part') for n in names])
            _store(finite_features(whole, encoders[i], split), keys[i], bases[i])
            for n in names:
                os.remove(n)
    distributed.barrier()
