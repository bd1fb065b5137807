"""Reading files that may come from someone else, without running what they hold.

Every file read may be another user's (shared caches, checkpoints, data folders), so nothing is unpickled
in a way that can run code. Torch files load with `weights_only=True`; plain pickles (CIFAR's python
batches) go through an unpickler that admits only builtin containers, strings, bytes, numbers and numpy
arrays. A file that asks for anything else is refused naming the file and what it asked for; one that
cannot be parsed is named as damaged.
"""
import codecs
import json
import os
import pickle
import re
import warnings

import numpy as np
import torch
from numpy._core.multiarray import _reconstruct

from utils.errors import CorruptFile, UnsafeFile

# The only globals a pickle of numpy arrays needs. Pickles written by numpy < 2 name the
# reconstruct function under numpy.core, numpy >= 2 under numpy._core.
NUMPY_GLOBALS = {
    'numpy.core.multiarray._reconstruct': _reconstruct,
    'numpy._core.multiarray._reconstruct': _reconstruct,
    'numpy.ndarray': np.ndarray,
    'numpy.dtype': np.dtype,
    '_codecs.encode': codecs.encode,  # how Python 3 pickles bytes at protocol 2
}


# torch's loader also checks the class of every object it restores: numpy >= 2 gives each dtype its own
NUMPY_DTYPE_CLASSES = [type(np.dtype(code)) for code in '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat']]


def load_json(path, kind=dict):
    """A JSON object (or, with kind=list, array) the package wrote earlier, or an empty one where the
    file is missing, unreadable or of another kind (the caller then redoes the work it would have saved)."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return kind()
    return obj if isinstance(obj, kind) else kind()


def _refused(what, path, name):
    return UnsafeFile(f'{what} {path} refused: loading it would call {name}, which no data file needs '
                      f'(it could run code); delete it, or rebuild it from inputs you trust')


def load_torch(path, what='checkpoint', numpy_arrays=False, fix='delete it to rebuild'):
    """torch.load(weights_only=True) that names a refused, corrupt or truncated file.

    numpy_arrays: also admit pickled numpy arrays (files other tools wrote, e.g. CIFAR-N); fix: what a
    corrupt file's message tells the user to do."""
    allowed = [(obj, name) for name, obj in NUMPY_GLOBALS.items()] + NUMPY_DTYPE_CLASSES if numpy_arrays else []
    try:  # torch warns of a pickle protocol it did not write before refusing it: the refusal says it all
        with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='Detected pickle protocol', category=UserWarning)
            return torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        # the words of torch's refusal of a global, as its versions put them
        unsafe = re.search(r'Unsupported global: GLOBAL (\S+)|unsupported GLOBAL (\S+)|but got <class \'([^\']+)\'>',
                           str(exc))
        if unsafe:
            raise _refused(what, path, next(g for g in unsafe.groups() if g)) from None
        if 'Weights only load failed' in str(exc):  # damaged, or pickled with what the safe reader does not read
            reason = re.search(r'WeightsUnpickler error: \s*(.+)', str(exc))
            raise UnsafeFile(f'{what} {path} refused: it is not a file torch reads without running code '
                             f'({reason.group(1).strip() if reason else "unreadable"}); it is damaged or was '
                             f'written by another program: delete it, or rebuild it from inputs you trust') from None
        raise _corrupt(what, path, exc, fix) from exc
    except Exception as exc:
        raise _corrupt(what, path, exc, fix) from exc


def _corrupt(what, path, exc, fix='delete it to rebuild'):
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ''
    return CorruptFile(f'{what} {path} is corrupt or truncated ({type(exc).__name__}: {first}); {fix}')


class _ArraysOnly(pickle.Unpickler):
    """Builtin containers, strings, bytes, numbers and numpy arrays; any other global is refused."""

    def __init__(self, f, what, path):
        super().__init__(f, encoding='latin1')  # CIFAR's batches were pickled by Python 2
        self.what, self.path = what, path

    def find_class(self, module, name):
        qualified = f'{module}.{name}'
        if qualified in NUMPY_GLOBALS:
            return NUMPY_GLOBALS[qualified]
        raise _refused(self.what, self.path, qualified)


def load_pickle(path, what, fix):
    """A plain pickle of builtin values and numpy arrays (CIFAR's python batches), read safely;
    `fix` says what to do about a corrupt or truncated file."""
    with open(path, 'rb') as f:
        try:
            return _ArraysOnly(f, what, path).load()
        except UnsafeFile:
            raise
        except Exception as exc:
            raise _corrupt(what, path, exc, fix) from exc


def read_jsonl(path):
    """The records of a JSON-lines file ([] where there is none); a last line without its end, which a write
    cut short would leave, is not a record."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith('\n') and line.strip()]
