"""Devices, seeds and run folders."""
import os
import random
import signal
import sys
import threading
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


def default_run_name(cfg):
    stamp = time.strftime('%Y%m%d-%H%M%S')
    noise = os.path.basename(cfg.noise_type).replace('.npy', '')
    if noise == 'own':  # the dataset's own labels: name the dataset
        noise = cfg.dataset or noise
    return f'{noise}_{cfg.fp_encoder}_{cfg.diff_encoder}_s{cfg.seed}_{stamp}'


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped a run after it wrote its checkpoint; the message says how to resume."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """Within `with StopSignals() as stop:` a first SIGTERM or SIGINT only sets stop.signum (the
    training loop finishes its step, writes last.pt and stops); a second one stops at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        self.signum, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    @property
    def name(self):
        return signal.Signals(self.signum).name if self.signum else None

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt(f'second {signal.Signals(signum).name}: stopped at once')
        self.signum = signum
        print(f'\n{self.name}: finishing this training step, then writing last.pt (send it again to stop at once)',
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False
