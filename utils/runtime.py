"""Devices, seeds and run folders."""
import os
import random
import time

import numpy as np
import torch


class SetupError(RuntimeError):
    """Bad input or environment: the message names the problem and the fix."""


def resolve_device(name):
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SetupError(f'--device {name} asked for CUDA, but torch sees no CUDA device '
                         f'(torch {torch.__version__}); use --device cpu or run on a GPU machine')
    if device.type == 'cuda' and device.index is not None and device.index >= torch.cuda.device_count():
        raise SetupError(f'--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible')
    return device


def device_description(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)'


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def rng_state():
    state = {'torch': torch.get_rng_state(), 'numpy': np.random.get_state(), 'python': random.getstate()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    np.random.set_state(state['numpy'])
    random.setstate(state['python'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def default_run_name(cfg):
    stamp = time.strftime('%Y%m%d-%H%M%S')
    noise = os.path.basename(cfg.noise_type).replace('.npy', '')
    return f'{noise}_{cfg.fp_encoder}_{cfg.diff_encoder}_s{cfg.seed}_{stamp}'
