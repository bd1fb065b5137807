"""Shared pieces of the benchmark commands: timing, memory, synthetic CIFAR-sized data, reporting."""
import json
import time

import torch
from torch.autograd import DeviceType

from utils.storage.saving import save_json

# The authors' code on one H100, bf16 not used (docs/REFERENCE.md): the figures ours are set beside.
AUTHORS_H100 = {
    'inference_s': {  # encoder + 10-step DDIM over CIFAR-sized images
        10000: {'Standard': 1.24, 'SimCLR': 3.01, 'ViT-B/32': 3.81, 'ViT-B/16': 3.58, 'ViT-L/14': 8.18},
        50000: {'Standard': 3.17, 'SimCLR': 11.71, 'ViT-B/32': 11.92, 'ViT-B/16': 16.70, 'ViT-L/14': 38.56},
    },
    'train_s_per_epoch': {'SimCLR': 22.0, 'ViT-L/14': 14.0},   # CIFAR-10, 45k images, batch 200
    'feature_extraction_s': {'ViT-L/14': 30.0},                 # embedding the training set once
    'eval_s_each': {'ViT-L/14': 12.0},                          # 5k val + 10k test re-encoded
    'paper_length_min': {'SimCLR': 76.0, 'ViT-L/14': 55.0},     # 200 epochs, evaluation every 5
}

# This package's targets on one H100 (issue 15): seconds unless named otherwise.
TARGETS = {
    'inference_s': {50000: {'Standard': 1.0, 'SimCLR': 2.0, 'ViT-B/32': 2.0, 'ViT-B/16': 4.0, 'ViT-L/14': 16.0}},
    'paper_length_min': {'SimCLR': 4.0, 'ViT-L/14': 2.0},   # issue 27's (5 and 3 before 2026-12-06)
    'knn_1m_s': 60.0,
    'extraction_images_per_s': 3000.0,
    'simclr_epoch_s': 2.0,   # SimCLR ResNet-50 pre-training, one CIFAR-10 epoch (issue 27)
}


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


def profiled(fn, device, top=15):
    """fn() under torch.profiler (CPU, and CUDA on a GPU): its result, and the `top` ops that took the most
    self time (device time on a GPU, CPU time otherwise) with their share of it (ranked_ops)."""
    cuda = torch.device(device).type == 'cuda'
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        result = fn()
        synchronize(device)
    return result, ranked_ops(prof.key_averages(), cuda, top)


def ranked_ops(events, cuda, top):
    """The `top` events by self time, each with its share of the total over the same events. On a GPU the
    kernels alone: the CPU op that launched a kernel carries the kernel's device time too (counted twice, every
    share would be halved and an op would rank beside its own kernel), and a kernel a CUDA graph replays has
    no launching op at all; a user annotation (the optimiser's step, say) spans kernels counted already."""
    def self_us(e):
        if cuda:  # torch ≥ 2.4 names it device time; earlier, cuda time
            return getattr(e, 'self_device_time_total', None) or getattr(e, 'self_cuda_time_total', 0)
        return e.self_cpu_time_total
    if cuda:
        events = [e for e in events if getattr(e, 'device_type', None) == DeviceType.CUDA
                  and not getattr(e, 'is_user_annotation', False)]
    total = sum(self_us(e) for e in events) or 1
    ranked = sorted(events, key=self_us, reverse=True)[:top]
    return [{'op': e.key, 'calls': e.count, 'self_s': round(self_us(e) / 1e6, 6), 'share': round(self_us(e) / total, 4)}
            for e in ranked if self_us(e) > 0]


def reset_peak(device):
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device):
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else float('nan')


def random_images(n, size=32, device='cpu', seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g).to(device)


def cifar_like_features(n_keys, n_queries, width, seed=0, device='cpu'):
    """Keys and queries for neighbour searches: unit-norm, non-negative features of ten clusters (as a
    ResNet's pooled features, L2-normalised; mean cosine about 0.35), the queries jittered copies of
    some keys, as augmented views of training images."""
    g = torch.Generator().manual_seed(seed)
    latent = 32
    centres = torch.randn(10, latent, generator=g)
    z = centres[torch.randint(0, 10, (n_keys,), generator=g)] + 0.6 * torch.randn(n_keys, latent, generator=g)
    lift = torch.randn(latent, width, generator=g) / latent ** 0.5
    zq = z[torch.randint(0, n_keys, (n_queries,), generator=g)] + 0.25 * torch.randn(n_queries, latent, generator=g)
    return [torch.nn.functional.normalize(torch.relu(v @ lift), dim=1).to(device) for v in (z, zq)]


def same_sets(a, b):
    """The share of rows of two neighbour tables whose sets are equal (order aside)."""
    return float((a.sort(1).values == b.sort(1).values).all(1).float().mean())


def device_line(device):
    from utils.runtime.devices import device_description
    return f'{device_description(device)}, torch {torch.__version__}'


def report(result, out=None, indent=None):
    """Print a benchmark's result as JSON and, with `out`, write it there too."""
    print(json.dumps(result, indent=indent))
    if out:
        save_json(result, out)
    return result
