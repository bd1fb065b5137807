"""Every random generator a run draws from: seeded together, saved and restored together (a resumed
run replays exactly what an uninterrupted one would)."""
import random

import numpy as np
import torch


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def rng_state():
    """Every generator's state as tensors, lists and numbers: what torch.load(weights_only=True) reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {'torch': torch.get_rng_state(), 'numpy': [kind, keys.tolist(), pos, has_gauss, gauss],
             'python': random.getstate()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state['python'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
