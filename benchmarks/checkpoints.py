"""What a checkpoint costs the training loop: the authors' CIFAR-10 state (train_CIFAR.py's denoiser
with its CIFAR-stem diffusion encoder, and Adam's moments of what is trained) saved --saves times
as the loop once did (save_torch: write and fsync, the loop waiting) and as it does now
(BackgroundSaves: the loop waits only for a copy to host memory, or for a write still under way).

    python -m benchmarks.checkpoints --out_dir /tmp/ckpt            # on the CPU
    python -m benchmarks.checkpoints --out_dir /tmp/ckpt --device cuda

Prints each save's seconds in both ways and the state's size. The disk decides these figures: name it
beside them.
"""
import argparse
import os
import tempfile
import time

import torch

import train_CIFAR
from benchmarks.common import device_line
from utils.diff_encoders import build_model
from utils.storage.saving import BackgroundSaves, save_torch

SIMCLR_DIM = 512  # the authors' SimCLR ResNet-50 feature, f_p of the CIFAR rows


def authors_state(device):
    """The model and optimiser state train_CIFAR.py's defaults checkpoint, Adam's moments filled."""
    cfg = train_CIFAR.config(['--device', str(device)])
    model = build_model(cfg, 10, SIMCLR_DIM, (3, 32, 32)).to(device)
    if cfg.freeze_diff_encoder:  # the authors' diffusion encoder is never optimised: no moments for it
        model.diff_encoder.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=cfg.lr)
    for p in trained:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return {'model': model.state_dict(), 'optimizer': optimizer.state_dict()}


def state_bytes(state):
    tensors = [*state['model'].values(), *(v for s in state['optimizer']['state'].values() for v in s.values())]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def synchronous(state, path, n):
    seconds = []
    for _ in range(n):
        start = time.perf_counter()
        save_torch(state, path)
        seconds.append(time.perf_counter() - start)
    return seconds


def in_background(state, path, n):
    """The loop's wait in each save (a copy to host memory, or the write before still under way)."""
    seconds = []
    with BackgroundSaves() as saves:
        for _ in range(n):
            start = time.perf_counter()
            saves.save(state, path)
            seconds.append(time.perf_counter() - start)
            time.sleep(1.0)  # an epoch's work between checkpoints (the fastest paper-length epochs)
    return seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out_dir', required=True, help='a folder on the disk the runs write to')
    p.add_argument('--saves', type=int, default=5)
    p.add_argument('--device', default='cpu')
    args = p.parse_args(argv)
    device = torch.device(args.device)
    os.makedirs(args.out_dir, exist_ok=True)
    state = authors_state(device)
    # a folder of its own under --out_dir, removed whole: a run folder named there keeps its last.pt
    with tempfile.TemporaryDirectory(prefix='checkpoint-benchmark-', dir=args.out_dir) as folder:
        path = os.path.join(folder, 'last.pt')
        print(f'{device_line(device)}; state {state_bytes(state) / 1e6:.0f} MB of tensors, written to {folder}')
        result = {'synchronous_s': synchronous(state, path, args.saves),
                  'background_wait_s': in_background(state, path, args.saves)}
    for name, seconds in result.items():
        print(f'{name}: {min(seconds):.3f}–{max(seconds):.3f} s a save ({", ".join(f"{s:.3f}" for s in seconds)})')
    return result


if __name__ == '__main__':
    main()
