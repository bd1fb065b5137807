"""A state dict as fp16 shards small enough to come back from a lent device (at most 16 MB a file),
and back again.

Floating tensors travel as fp16 (half the bytes; an encoder's features barely move), other tensors
(BatchNorm's step counters) as they are. A tensor larger than a shard travels in flat pieces. The
manifest names every shard with its size and SHA-256, so a reassembly refuses a shard that is
missing, truncated or altered; shards are read with `torch.load(weights_only=True)`.
"""
import json
import math
import os
import re

import torch

from utils.pretraining.export import sidecar_path
from utils.storage.fingerprints import file_digest
from utils.storage.loading import load_json
from utils.storage.saving import save_json, save_torch

FORMAT = 'fp16-shards-1'
MANIFEST = 'manifest.json'
MAX_BYTES = 15_000_000      # under the 16 MB a returned file may have, in either reading of "MB"
PACK_HEADROOM = 0.97        # torch.save adds a little per tensor: pack tensor bytes below the limit
SHARD_NAME = re.compile(r'shard-\d{3,}\.pt')


class ShardError(ValueError):
    pass


def sha256(path):
    return file_digest(path, 'sha256')


def _pieces(name, tensor, max_bytes):
    """(key, tensor) pairs of at most max_bytes each: the tensor whole, or flat pieces of it."""
    t = tensor.detach().cpu()
    t = t.half() if t.is_floating_point() else t
    t = t.contiguous()
    nbytes = t.numel() * t.element_size()
    if nbytes <= max_bytes:
        return [(name, t)], 0
    per_piece = max_bytes // t.element_size()
    n = math.ceil(t.numel() / per_piece)
    return [(f'{name}::{i}', p.clone()) for i, p in enumerate(t.flatten().split(per_piece))], n


def remove_own_shards(folder):
    """The shards an earlier manifest in `folder` lists, and that manifest: a shorter export must not
    leave shards of a longer one behind, and a file no manifest of ours names is not ours to delete."""
    manifest = os.path.join(folder, MANIFEST)
    if not os.path.isfile(manifest):
        return
    earlier = load_json(manifest)
    if earlier.get('format') != FORMAT:
        raise ShardError(f'{manifest} is not a manifest of {FORMAT} shards; choose another folder or delete it')
    listed = earlier.get('shards')
    names = [s.get('file') for s in listed if isinstance(s, dict)] if isinstance(listed, list) else []
    for name in names:
        if isinstance(name, str) and SHARD_NAME.fullmatch(name) and os.path.isfile(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    os.remove(manifest)


def write_shards(state_dict, folder, max_bytes=MAX_BYTES, extra=None):
    """Write `folder/shard-NNN.pt` files of at most max_bytes and `folder/manifest.json`."""
    os.makedirs(folder, exist_ok=True)
    remove_own_shards(folder)
    budget = int(max_bytes * PACK_HEADROOM)
    tensors, groups, current, used = {}, [], {}, 0
    for name, value in state_dict.items():
        pieces, n_pieces = _pieces(name, value, budget)
        tensors[name] = {'shape': list(value.shape), 'dtype': str(value.dtype).replace('torch.', ''),
                         'pieces': n_pieces}
        for key, t in pieces:
            size = t.numel() * t.element_size()
            if current and used + size > budget:
                groups.append(current)
                current, used = {}, 0
            current[key], used = t, used + size
    groups.append(current)
    shards = []
    for i, group in enumerate(groups):
        path = os.path.join(folder, f'shard-{i:03d}.pt')
        save_torch(group, path)
        size = os.path.getsize(path)
        if size > max_bytes:
            raise ShardError(f'{path} came out at {size} bytes, over {max_bytes}; lower PACK_HEADROOM')
        shards.append({'file': os.path.basename(path), 'bytes': size, 'sha256': sha256(path)})
    manifest = {'format': FORMAT, 'shards': shards, 'tensors': tensors, **(extra or {})}
    save_json(manifest, os.path.join(folder, MANIFEST))
    return manifest


def read_shards(folder):
    """(state dict with each tensor in its original dtype, manifest), every shard checked first."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise ShardError(f'{folder}: no {MANIFEST}; pass the folder the shards came back in')
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get('format') != FORMAT:
        raise ShardError(f'{path}: format {manifest.get("format")!r}, expected {FORMAT!r}')
    stored = {}
    for shard in manifest['shards']:
        file = os.path.join(folder, os.path.basename(shard['file']))
        if not os.path.isfile(file) or os.path.getsize(file) != shard['bytes'] or sha256(file) != shard['sha256']:
            raise ShardError(f'{file} is missing or differs from the manifest (size or SHA-256); copy it again')
        stored.update(torch.load(file, map_location='cpu', weights_only=True))
    state = {}
    for name, info in manifest['tensors'].items():
        n = info['pieces']
        flat = torch.cat([stored[f'{name}::{i}'] for i in range(n)]) if n else stored[name]
        state[name] = flat.reshape(info['shape']).to(getattr(torch, info['dtype']))
    return state, manifest


def reassemble(folder, to):
    """Put the shards in `folder` back together as one state dict file `to` (+ its sidecar, if sent)."""
    state, manifest = read_shards(folder)
    save_torch(state, to)
    if manifest.get('sidecar') is not None:
        # without the digest of the encoder as exported: these are its weights rounded, other bytes
        sidecar = {**{k: v for k, v in manifest['sidecar'].items() if k != 'sha1'},
                   'transport': 'weights rounded to fp16 on the device, stored as float32'}
        save_json(sidecar, sidecar_path(to))
    return to
