"""The device a run asks for (`--device`), and how it is named in results."""
import os

import torch

from utils.errors import SetupError


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


