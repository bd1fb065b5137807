"""Shared pieces of the benchmark commands: timing, memory, synthetic CIFAR-sized data."""
import time

import torch


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(result, seconds) of fn() with the device synchronised on both sides."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def reset_peak(device):
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device):
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else float('nan')


def random_images(n, size=32, device='cpu', seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g).to(device)


def device_line(device):
    from utils.runtime import device_description
    return f'{device_description(device)}, torch {torch.__version__}'
