"""Atomic writes: a file appears whole or not at all, even if the process is killed mid-write."""
import json
import os
import tempfile

import torch


def atomic_write(path, write, check=None):
    """`write(f)` into a temporary file beside `path`, then rename it to `path`; `check(tmp_path)` may
    refuse the written file by raising, and then nothing is left behind."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_torch(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj, path):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + '\n').encode()))


def write_jsonl(records, path):
    """Replace a JSON-lines file with `records` (e.g. a log trimmed back to a checkpoint)."""
    atomic_write(path, lambda f: f.write(''.join(json.dumps(r, sort_keys=True) + '\n' for r in records).encode()))


def append_jsonl(record, path):
    with open(path, 'a') as f:
        f.write(json.dumps(record, sort_keys=True) + '\n')


def load_torch(path, what='checkpoint'):
    """torch.load that names a corrupt or truncated file instead of a bare unpickling error."""
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise RuntimeError(f'{what} {path} is corrupt or truncated ({type(exc).__name__}: {exc}); '
                           f'delete it to rebuild') from exc
