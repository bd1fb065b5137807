"""Wall time of a paper-length CIFAR-10 run: 45k training images, 200 epochs, evaluation every 5
epochs on the 5k validation and 10k test splits, feature extraction included.

    python -m benchmarks.training                                   # one GPU: SimCLR and CLIP ViT-L/14
    python -m benchmarks.training --diff_encoders resnet18 fp_mlp   # each diffusion encoder
    python -m benchmarks.training --small --epochs 2                # CPU smoke test
    python -m benchmarks.training --data_root data --epochs 1 -- --recipe improved   # real CIFAR-10
    python -m benchmarks.training --data_root data --epochs 1 --profile               # where an epoch goes

Runs `train_CIFAR.py`'s engine on CIFAR-sized random images (speed does not depend on the pixels),
or on real CIFAR-10 with 35% uniform noise when --data_root holds `cifar-10-batches-py/`, with
random-weight encoders written and read through the real loaders. Flags after `--` go to
train_CIFAR.py (a recipe, say). With --epochs below 200 the paper-length time is projected from the
measured parts (labelled as such). With --profile the first epoch runs under torch.profiler and each
row gains its ops by self time (on the GPU, device time); the profiler slows that epoch, so such a
row's seconds are not speed figures.
"""
import argparse
import contextlib
import json
import os
import tempfile
import time

import torch

import train_CIFAR
from benchmarks.common import AUTHORS_H100, device_line, profiled, random_images
from utils.config import parse_config
from utils.data import ImageSplits, load_cifar
from utils import engine
from utils.engine import run
from utils.io import save_json
from utils.random_weights import save_random_clip, save_random_simclr
from utils.runtime import resolve_device
from utils.schedule import is_eval_epoch


def synthetic_cifar(n_train, n_val, n_test, seed=0):
    g = torch.Generator().manual_seed(seed)
    def labels(n):
        return torch.randint(0, 10, (n,), generator=g)
    return ImageSplits(name='synthetic', n_class=10,
                       train_images=random_images(n_train, seed=seed), train_clean=labels(n_train),
                       val_images=random_images(n_val, seed=seed + 1), val_labels=labels(n_val),
                       test_images=random_images(n_test, seed=seed + 2), test_labels=labels(n_test))


def one_run(encoder, diff_encoder, args, folder, splits):
    name = f'{encoder.replace("/", "")}-{diff_encoder}'
    chosen = [] if diff_encoder == 'default' else ['--diff_encoder', diff_encoder]  # default: the recipe's
    flags = ['--noise_type', f'{splits.name}-U-0.35', '--nepoch', str(args.epochs), *chosen,
             '--device', args.device, '--out_dir', os.path.join(folder, 'runs'), '--n_samples', '0',
             '--cache_dir', os.path.join(folder, f'cache-{name}'), '--run_name', name,
             '--warmup_epochs', str(min(20, args.epochs - 1)), *args.extra]
    if encoder == 'SimCLR':
        path = os.path.join(folder, 'simclr.pt')
        if not os.path.exists(path):
            save_random_simclr('resnet18' if args.small else 'resnet50', path)
        flags += ['--fp_encoder', 'SimCLR', '--fp_checkpoint', path]
    else:
        arch = 'tiny' if args.small else encoder
        path = os.path.join(folder, arch.replace('/', '-') + '.pt')
        if not os.path.exists(path):
            save_random_clip(arch, path)
        flags += ['--fp_encoder', 'CLIP', '--CLIP_type', path]
    cfg = parse_config('', train_CIFAR.DEFAULTS, flags)
    started, ops = time.time(), []
    with profiled_first_epoch(ops) if args.profile else contextlib.nullcontext():
        summary, _ = run(cfg, lambda c: splits)
    total = time.time() - started
    s = summary['seconds']
    n_evals = sum(is_eval_epoch(e, cfg) for e in range(cfg.nepoch)) or 1
    per_eval = s['evaluations'] / n_evals
    paper = parse_config('', train_CIFAR.DEFAULTS, args.extra)  # the recipe may move warm-up or evaluation
    paper_evals = sum(is_eval_epoch(e, paper) for e in range(200))
    projected = s['prepare'] + 200 * s['train_per_epoch'] + paper_evals * per_eval + s['checkpoints'] / cfg.nepoch * 200
    return {'encoder': encoder, 'diff_encoder': cfg.diff_encoder, 'epochs_run': cfg.nepoch,
            'feature_extraction_s': s['prepare'], 'train_s_per_epoch': s['train_per_epoch'],
            'eval_s_each': round(per_eval, 3), 'wall_s_measured': round(total, 1),
            'paper_length_min': round(projected / 60, 2) if cfg.nepoch < 200 else round(total / 60, 2),
            'paper_length_is_projection': cfg.nepoch < 200,
            'authors_min': None if args.small else AUTHORS_H100['paper_length_min'].get(encoder),
            'data': splits.name, 'train_CIFAR_flags': args.extra,
            **({'profile': ops} if args.profile else {})}


@contextlib.contextmanager
def profiled_first_epoch(ops):
    """The engine's first training epoch under torch.profiler; its top ops by self time go into `ops`."""
    original = engine.Trainer.train_epoch

    def train_epoch(trainer, epoch):
        if ops:
            return original(trainer, epoch)
        loss, top = profiled(lambda: original(trainer, epoch), trainer.device)
        ops.extend(top)
        return loss
    engine.Trainer.train_epoch = train_epoch
    try:
        yield
    finally:
        engine.Trainer.train_epoch = original


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--encoders', nargs='+', default=['SimCLR', 'ViT-L/14'],
                   choices=['SimCLR', 'ViT-B/32', 'ViT-B/16', 'ViT-L/14'])
    p.add_argument('--diff_encoders', nargs='+', default=['resnet18'],
                   help="diffusion encoders to time; 'default': train_CIFAR.py's (or the recipe's) choice")
    p.add_argument('--epochs', type=int, default=200)
    p.add_argument('--device', default='auto')
    p.add_argument('--small', action='store_true', help='tiny stand-ins and a small dataset (CPU smoke test)')
    p.add_argument('--sizes', type=int, nargs=3, metavar=('TRAIN', 'VAL', 'TEST'),
                   help='random images per split (default 45000 5000 10000; 300 100 100 with --small)')
    p.add_argument('--data_root', help='real CIFAR-10: the folder holding cifar-10-batches-py/ '
                                       '(default: random images)')
    p.add_argument('--out', help='write the rows as JSON here')
    p.add_argument('--profile', action='store_true', help='profile the first epoch: its ops by self time')
    p.add_argument('extra', nargs=argparse.REMAINDER, help='further train_CIFAR.py flags after --')
    args = p.parse_args(argv)
    args.extra = [a for a in args.extra if a != '--']
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    if args.data_root:
        splits = load_cifar('cifar10', args.data_root, download=False)
    else:
        splits = synthetic_cifar(*(args.sizes or ((300, 100, 100) if args.small else (45000, 5000, 10000))))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for encoder in args.encoders:
            for diff_encoder in args.diff_encoders:
                rows.append(one_run(encoder, diff_encoder, args, folder, splits))
    print(f'device: {device_line(device)}')
    print('| f_p | diffusion encoder | features (s) | s/epoch | s/evaluation | paper-length run (min) | authors (min) |')
    print('|---|---|---|---|---|---|---|')
    for r in rows:
        proj = ' (projected)' if r['paper_length_is_projection'] else ''
        print(f"| {r['encoder']} | {r['diff_encoder']} | {r['feature_extraction_s']} | {r['train_s_per_epoch']} | "
              f"{r['eval_s_each']} | {r['paper_length_min']}{proj} | {r['authors_min']} |")
    for r in rows:
        print(json.dumps(r))
    if args.out:
        save_json({'device': device_line(device), 'rows': rows}, args.out)
    return rows


if __name__ == '__main__':
    main()
