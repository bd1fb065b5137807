"""Every random generator a run draws from: seeded together, saved and restored together (a resumed
run replays exactly what an uninterrupted one would)."""
import random

import numpy as np
import torch


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def rng_state(device):
    """Every generator the run draws from, as tensors, lists and numbers (what torch.load(weights_only=True)
    reads): the CPU's, numpy's, Python's and, on CUDA, the run device's alone. Every visible GPU's would
    not restore on a machine that sees fewer, and would put cuda:1's state into cuda:0 on one that
    resumes there."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {'torch': torch.get_rng_state(), 'numpy': [kind, keys.tolist(), pos, has_gauss, gauss],
             'python': random.getstate()}
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def is_rng_state(v):
    """Whether `v` has rng_state's form (torch's state, numpy's five parts, Python's three): a saved one is
    checked before set_rng_state would fail on it with a traceback."""
    return isinstance(v, dict) and torch.is_tensor(v.get('torch')) and isinstance(v.get('numpy'), (list, tuple)) \
        and len(v['numpy']) == 5 and isinstance(v.get('python'), (list, tuple)) and len(v['python']) == 3


def set_rng_state(state, device):
    torch.set_rng_state(state['torch'])
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state['python'])
    if 'cuda' in state and device.type == 'cuda':
        torch.cuda.set_rng_state(_device_state(state['cuda'], device), device)


def _device_state(saved, device):
    """The run device's CUDA generator state: the one saved, or from a state saved before 2026-12-07 (one
    per visible GPU) the entry of the run device's index, the first where that machine saw fewer."""
    if torch.is_tensor(saved):
        return saved
    index = device.index if device.index is not None else torch.cuda.current_device()
    return saved[index] if index < len(saved) else saved[0]
