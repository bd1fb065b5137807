"""Fingerprints: short hashes that say whether two things are the same.

Caches, resume checks and published inputs compare fingerprints instead of contents: of a tensor's
bytes, of a JSON-able key, of a list of paths, of image files (path, size and modification time), of a
module's weights, of a file's bytes, and git's blob hash of a published file.
"""
import hashlib
import json
import os

import numpy as np
import torch

from utils.errors import DatasetMissing


def file_digest(path, algorithm='sha1', prefix=b''):
    """Hex digest of a file's bytes (after `prefix`), read in 4 MiB blocks."""
    h = hashlib.new(algorithm, prefix)
    with open(path, 'rb') as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def git_blob_sha1(data):
    """What `git hash-object` prints for a file holding `data`."""
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def git_blob_sha1_of_file(path):
    return file_digest(path, 'sha1', b'blob %d\0' % os.path.getsize(path))


def tensor_fingerprint(tensor):
    """sha1 of a tensor's bytes (150 MB for CIFAR's 45k images: a fraction of a second)."""
    data = tensor.detach().cpu().contiguous().view(torch.uint8).numpy()
    return hashlib.sha1(np.ascontiguousarray(data).tobytes()).hexdigest()[:16]


def key_fingerprint(key):
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def paths_fingerprint(paths):
    """sha1 of a list of file names (what the files hold does not enter: files_fingerprint)."""
    return hashlib.sha1('\n'.join(paths).encode()).hexdigest()[:16]


def _stat(path, name):
    """(name and size, modification time) of one file, as files_fingerprints hashes them."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise unreadable_image(path, exc) from None
    return f'{name}\t{st.st_size}', st.st_mtime_ns


def unreadable_image(path, exc):
    return DatasetMissing(f'image {path} cannot be read ({exc.strerror}); restore it, or remove it from the '
                          f'dataset\'s list')


def within_common_folder(paths):
    """Each path after the deepest folder all of them share, as spelled: the names a list of files keeps
    when the whole folder is moved, or named by another path (relative, absolute, through another mount).
    Textual, as the files below that folder are listed by one spelling: a million paths take a fraction
    of a second (os.path.commonpath and relpath take tens of seconds)."""
    if not paths:
        return []
    shared = os.path.commonprefix([min(paths), max(paths)])  # the sorted extremes share what all share
    cut = shared.rfind(os.sep) + 1  # back to the last separator: /data/cat and /data/cat2 share /data/
    return [p[cut:] for p in paths]


def files_fingerprint(paths, names=None):
    """sha1 of every file's path, size and modification time (ns): what the files are, as far as a cache
    or a resumed run can afford to ask. A digest of the bytes would read every image at every start
    (Clothing1M: a million files, tens of GB), as long as extracting the features anew; size and mtime,
    which make and rsync trust too, cost one stat per file (a second or two per million files on a
    local disk; run in threads for network file systems). A rewrite that keeps both (same size, mtime
    set back) escapes it: delete the cache then. `names`: what each file is called in the digest (by
    default its path)."""
    return files_fingerprints(paths, names)[0]


def files_fingerprints(paths, names=None):
    """(files_fingerprint, the same without modification times, the newest modification time in ns) from
    one stat per file: where only the first differs, the files have their names and sizes but other times
    (a copy that did not keep them); a file changed since has a time after the newest."""
    with_times, sizes, newest = hashlib.sha1(), hashlib.sha1(), 0
    for name_size, mtime in _stats(paths, names):
        with_times.update(f'{name_size}\t{mtime}\n'.encode())
        sizes.update(name_size.encode() + b'\n')
        newest = max(newest, mtime)
    return with_times.hexdigest()[:16], sizes.hexdigest()[:16], newest


def files_modified_after(paths, ns):
    """The paths whose modification time is after `ns`."""
    return [path for path, (_, mtime) in zip(paths, _stats(paths)) if mtime > ns]


def _stats(paths, names=None):
    """_stat of every file, in order: one stat each, in threads (a network file system answers them in
    parallel)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(16) as pool:
        yield from pool.map(_stat, paths, paths if names is None else names, chunksize=1024)


def sampled_files_digest(paths):
    """sha1 of the bytes of the first, middle and last file: beside their names within their folder,
    sizes and times, it tells apart two folders whose files agree in all three (archives unpacked with
    one normalised time), at the cost of reading three files."""
    picks = sorted({0, len(paths) // 2, len(paths) - 1}) if paths else []
    digests = []
    for i in picks:
        try:
            digests.append(file_digest(paths[i]))
        except OSError as exc:  # a folder, no permission, or gone since its stat
            raise unreadable_image(paths[i], exc) from None
    return hashlib.sha1(' '.join(digests).encode()).hexdigest()[:16]


def weights_fingerprint(module):
    """A short hash of every parameter and buffer (names, shapes and float64 moments)."""
    h = hashlib.sha1()
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().double()
            h.update(f'{name}{tuple(t.shape)}{t.sum().item():.10e}{t.abs().sum().item():.10e}'
                     f'{t.flatten()[:8].tolist()}'.encode())
    return h.hexdigest()[:16]
