"""Writing files (reading them, distrustfully, is utils/storage/loading.py).

Writes are atomic: a file appears whole or not at all, even if the process is killed mid-write.

Every write (atomic_write, append_jsonl) first tells the run folder it lands in, where this process
holds one (utils/runs/folders.RunClaim): the folder records what its runs wrote before they write it, so a
later run knows which files are a run's and which are someone else's.
"""
import errno
import json
import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from utils.errors import CannotWrite

WRITE_FAULTS = {errno.ENOSPC: 'no space left on device', errno.EDQUOT: 'disk quota exceeded',
                errno.EROFS: 'read-only file system', errno.EACCES: 'permission denied',
                errno.EPERM: 'operation not permitted'}


class _Recording:
    """A file whose write errors are kept: torch.save reports a failed write only as `enforce fail at
    inline_container.cc`, losing the errno that says the disk is full."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self):
        self.f.flush()


# the run folders this process holds, each with the functions that record a file about to be written into it,
# written, or removed (its path relative to the folder): utils/runs/folders.RunClaim registers and removes itself
_OWNED_FOLDERS = {}


def missing_folders(path):
    """The folders of `path` that do not exist yet, deepest first: those making it creates ([] where it exists;
    a link, even one to nothing, exists)."""
    missing, path = [], os.path.abspath(path)
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def owned_folder(folder, note, done=None, removed=None):
    """Have `note(relative path)` called before each write into `folder`, `done(relative path)` once the file
    is in place, and `removed(relative path)` once remove_files has removed one (note None: no longer)."""
    folder = os.path.abspath(folder)
    if note is None:
        _OWNED_FOLDERS.pop(folder, None)
    else:
        _OWNED_FOLDERS[folder] = {'before': note, 'after': done, 'removed': removed}


def _tell_owner(path, when):
    """Call the hook (`when`: 'before' or 'after' the write, or 'removed') of the owned folder `path` lies in."""
    full = os.path.abspath(path)
    for folder, hooks in list(_OWNED_FOLDERS.items()):
        if full.startswith(folder + os.sep) and hooks[when] is not None:
            hooks[when](os.path.relpath(full, folder))


def atomic_write(path, write, check=None, flag='--out_dir / --cache_dir'):
    """`write(f)` into a temporary file beside `path`, then rename it to `path`; `check(tmp_path)` may
    refuse the written file by raising, and then nothing is left behind. `flag`: where a full or
    read-only disk's message sends the user."""
    _tell_owner(path, 'before')
    folder = os.path.dirname(os.path.abspath(path))
    tmp, recording = None, None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix=TMP_SUFFIX)
        with os.fdopen(fd, 'wb') as f:
            recording = _Recording(f)
            write(recording)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
        _tell_owner(path, 'after')
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        cause = recording.error if recording is not None and recording.error is not None else exc
        if isinstance(cause, OSError) and cause.errno in WRITE_FAULTS:
            raise CannotWrite(cause.errno, f'{WRITE_FAULTS[cause.errno]} writing {path}: free space or fix the '
                                           f'permissions in {folder}, or choose another {flag}') from exc
        raise


# the temporary files of atomic_write are .<name>.<mkstemp's 8 characters>.lra-partial: a name no other
# program uses, so a sweep removes only this package's own partial writes (never a user's .*.tmp)
TMP_SUFFIX = '.lra-partial'
_PARTIAL = re.compile(r'\.(.+)\.[a-z0-9_]{8}' + re.escape(TMP_SUFFIX))
# before that they ended in .tmp: such a file is taken for the package's only where the caller knows its
# target for a file the package wrote (a run folder's record names it)
_LEGACY_PARTIAL = re.compile(r'\.(.+)\.[a-z0-9_]{8}\.tmp')


def partial_write_of(name, legacy=False):
    """The name of the file a partial write (atomic_write's temporary file) named `name` was for, else None;
    with `legacy`, the name an older version's temporary file was for too."""
    match = _PARTIAL.fullmatch(name) or (_LEGACY_PARTIAL.fullmatch(name) if legacy else None)
    return match.group(1) if match else None


def remove_files(folder, names):
    """Remove the named files of a folder, those that are there (a link itself, never what it points to); a
    run folder's claim is told, so that its record no longer takes a file of that name for the package's."""
    for name in names:
        path = os.path.join(folder, name)
        if os.path.lexists(path):
            os.remove(path)
            _tell_owner(path, 'removed')


def sweep_partial_writes(folder, older_than=None, legacy_targets=()):
    """Remove the temporary files of writes a killed process left behind (partial_write_of names them),
    only those last modified before the time `older_than` where given; an older version's too where
    their target is among `legacy_targets`."""
    if not os.path.isdir(folder):
        return []
    stale = [os.path.join(folder, name) for name in os.listdir(folder)
             if partial_write_of(name) or partial_write_of(name, legacy=True) in legacy_targets]
    stale = [path for path in stale if older_than is None or os.path.getmtime(path) < older_than]
    for path in stale:
        try:
            os.remove(path)
        except FileNotFoundError:  # another process swept it first
            pass
    return stale


def save_torch(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


class BackgroundSaves:
    """save_torch off the caller's critical path (a training loop's checkpoints: a write and an fsync of
    a hundred megabytes every epoch). `save` copies the object's tensors to host memory before it returns
    (the caller goes on changing its own), then one worker thread writes the copies in order, each
    atomically as save_torch does: a crash leaves the file before it whole. At most one save waits
    behind the one being written. `wait()` returns once every save is on disk; a failed write is raised
    there, or by a later `save` or `written`, as save_torch would have raised it. A `with` block waits
    for every save at its end."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix='checkpoint-writer')
        self.pending, self.seconds = [], 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.wait()
        finally:
            self.pool.shutdown()

    def save(self, obj, path):
        self._collect(keep=1)
        self.pending.append(self.pool.submit(_timed_save, to_host(obj), path))

    def written(self):
        """The seconds the writes finished since the last call took (without waiting for any)."""
        self._collect(keep=len(self.pending))
        seconds, self.seconds = self.seconds, 0.0
        return seconds

    def wait(self):
        """Block until every save is on disk; the seconds the writes took, as `written`."""
        self._collect(keep=0)
        return self.written()

    def _collect(self, keep):
        """The finished saves, then the oldest until at most `keep` remain; the first failure among them is
        raised once all of them have been collected."""
        failure = None
        while self.pending and (len(self.pending) > keep or self.pending[0].done()):
            try:
                self.seconds += self.pending.pop(0).result()
            except Exception as exc:  # raised below, once the later writes are collected too
                failure = failure or exc
        if failure is not None:
            raise failure


def _timed_save(obj, path):
    started = time.monotonic()
    save_torch(obj, path)
    return time.monotonic() - started


def to_host(obj):
    """A copy of `obj` (dicts, lists, tuples of tensors and plain values) with every tensor copied to
    host memory; a state dict stays an OrderedDict with its version metadata."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to('cpu', copy=True)
    if isinstance(obj, dict):
        copied = type(obj)((k, to_host(v)) for k, v in obj.items())
        if hasattr(obj, '_metadata'):
            copied._metadata = dict(obj._metadata)
        return copied
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(v) for v in obj)
    return obj


def save_json(obj, path):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + '\n').encode()))


def write_jsonl(records, path):
    """Replace a JSON-lines file with `records` (e.g. a log trimmed back to a checkpoint)."""
    atomic_write(path, lambda f: f.write(''.join(json.dumps(r, sort_keys=True) + '\n' for r in records).encode()))


def append_jsonl(record, path):
    """One line added in one write (a log read while it grows, or after a kill, holds whole lines; readers
    skip a last line without its end all the same: utils/storage/loading.read_jsonl)."""
    _tell_owner(path, 'before')
    line = memoryview((json.dumps(record, sort_keys=True) + '\n').encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the mode open() gives, less the umask
    try:
        while line:  # a short write (a full disk) goes on or raises, never leaves the line cut silently
            line = line[os.write(fd, line):]
    finally:
        os.close(fd)
