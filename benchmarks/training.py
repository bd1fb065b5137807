"""Wall time of a paper-length CIFAR-10 run: 45k training images, 200 epochs, evaluation every 5
epochs on the 5k validation and 10k test splits, feature extraction included.

    python -m benchmarks.training                                   # one GPU: SimCLR and CLIP ViT-L/14
    python -m benchmarks.training --nepoch 2                        # eager, then graphed: projected
    python -m benchmarks.training --diff_encoders resnet18 fp_mlp   # each diffusion encoder
    python -m benchmarks.training --small --nepoch 2                # CPU smoke test
    python -m benchmarks.training --data_root data --nepoch 2 -- --recipe improved   # real CIFAR-10
    python -m benchmarks.training --data_root data --nepoch 2 --modes graphed --profile  # where an epoch goes
    python -m benchmarks.training --data_root data --nepoch 2 --modes eval --kernels eager fused compiled

Runs `train_CIFAR.py`'s engine on CIFAR-sized random images (speed does not depend on the pixels),
or on real CIFAR-10 with 35% uniform noise when --data_root holds `cifar-10-batches-py/`, with
random-weight encoders written and read through the real loaders. Flags after `--` go to
train_CIFAR.py (a recipe, say). Each run goes once per --modes entry: eager (--cuda_graph off), eval
(--cuda_graph eval: graphed evaluation, an eager step) and graphed (--cuda_graph all); on the CPU all
are eager; with --kernels, once per mode and --frozen_kernels way. The later runs read the features
the first extracted.

With --nepoch below 200 every epoch is evaluated and the paper-length time is projected (labelled as
such) from warm figures: the first epoch and the first evaluation of a run pay for cuDNN autotuning,
CUDA graph capture and first allocations, so they count once and are reported apart; the other 199
epochs and the other evaluations are projected from the warm ones; the features from the first run.
With --profile the last epoch (warm) of each run runs under torch.profiler and each row gains its ops
by self time (on the GPU, device time); the profiler slows that epoch, so a profiled run's projection
is not a speed figure.
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
from utils.data.cifar import load_cifar
from utils.data.splits import ImageSplits
from utils.encoders.random_weights import save_random_clip, save_random_simclr
from utils.engine import run
from utils.runtime.devices import free_memory, resolve_device
from utils.runtime.frozen_kernels import FROZEN_KERNELS
from utils.schedule import is_eval_epoch
from utils.storage.saving import save_json
from utils.trainer import Trainer


def synthetic_cifar(n_train, n_val, n_test, seed=0):
    g = torch.Generator().manual_seed(seed)
    def labels(n):
        return torch.randint(0, 10, (n,), generator=g)
    return ImageSplits(name='synthetic', n_class=10,
                       train_images=random_images(n_train, seed=seed), train_clean=labels(n_train),
                       val_images=random_images(n_val, seed=seed + 1), val_labels=labels(n_val),
                       test_images=random_images(n_test, seed=seed + 2), test_labels=labels(n_test))


# --cuda_graph per mode: eager, graphed evaluation only, graphed step and evaluation
MODES = {'eager': 'off', 'eval': 'eval', 'graphed': 'all'}


def one_run(encoder, diff_encoder, mode, args, folder, splits, features_s=None, kernels='eager'):
    """One run of train_CIFAR.py's engine; `features_s`: the extraction an earlier run of the same
    encoder timed (this run reads its cache); `kernels`: its --frozen_kernels."""
    name = f'{encoder.replace("/", "")}-{diff_encoder}'
    run_name = f'{name}-{mode}' + (f'-{kernels}' if kernels != 'eager' else '')
    chosen = [] if diff_encoder == 'default' else ['--diff_encoder', diff_encoder]  # default: the recipe's
    projected = args.nepoch < 200
    schedule = ['--warmup_epochs', '0', '--eval_every', '1'] if projected else []  # a first and warm evaluations
    flags = ['--noise_type', f'{splits.name}-U-0.35', '--nepoch', str(args.nepoch), *chosen,
             '--device', args.device, '--out_dir', os.path.join(folder, 'runs'), '--n_samples', '0',
             '--cache_dir', os.path.join(folder, f'cache-{name}'), '--run_name', run_name,
             '--cuda_graph', MODES[mode], '--frozen_kernels', kernels, *schedule, *args.extra]
    flags += encoder_flags(encoder, args, folder)
    cfg = train_CIFAR.config(flags)
    started, ops = time.time(), []
    with profiled_last_epoch(ops, cfg.nepoch - 1) if args.profile else contextlib.nullcontext():
        summary, _ = run(cfg, lambda c: splits)
    total = time.time() - started
    row = {'encoder': encoder, 'diff_encoder': cfg.diff_encoder, 'mode': mode, 'cuda_graph': cfg.cuda_graph,
           'frozen_kernels': cfg.frozen_kernels,
           'epochs_run': cfg.nepoch, **epoch_figures(summary['seconds'], cfg.nepoch),
           'wall_s_measured': round(total, 1), 'data': splits.name, 'train_CIFAR_flags': args.extra,
           'authors_min': None if args.small else AUTHORS_H100['paper_length_min'].get(encoder)}
    row['feature_extraction_s'] = features_s if features_s is not None else summary['seconds']['prepare']
    row['paper_length_is_projection'] = projected
    row.update(image_network_rate(cfg, encoder, args.small, len(splits.source('train')), row['train_s_per_epoch']))
    row['paper_length_min'] = round((paper_projection(row, args) if projected else total) / 60, 2)
    return {**row, **({'profile': ops} if args.profile else {})}


def step_image_gflop(cfg, encoder, small):
    """GFLOP of the image networks one training step of --batch_size runs, counted on the meta device
    (shapes only, nothing computed): the diffusion encoder where it reads the pixels (forward, and backward
    where it trains) and f_p where the step re-encodes the augmented views (SimCLR). Beside them the rest
    of a step (the denoiser MLP, the neighbour search) is small. None where f_p re-encodes with CLIP."""
    from torch.utils.flop_counter import FlopCounterMode

    from utils.diff_encoders import build_diff_encoder, diff_encoder_input
    from utils.encoders.simclr import SimCLREncoder
    if cfg.fp_train_view == 'augmented' and encoder != 'SimCLR':
        return None
    with torch.device('meta'), FlopCounterMode(display=False) as counter:
        x = torch.empty(cfg.batch_size, 3, 32, 32)
        if diff_encoder_input(cfg.diff_encoder, cfg.diff_backbone) == 'image':
            net = build_diff_encoder(cfg.diff_encoder, cfg.feature_dim, 2048, (3, 32, 32), cfg.diff_backbone)
            with torch.set_grad_enabled(not cfg.freeze_diff_encoder):
                out = net(x)
            if not cfg.freeze_diff_encoder:
                out.sum().backward()
        if cfg.fp_train_view == 'augmented':
            with torch.no_grad():
                SimCLREncoder('resnet18' if small else 'resnet50').features(x)
    return counter.get_total_flops() / 1e9


def image_network_rate(cfg, encoder, small, n_train, train_s_per_epoch):
    """The image networks' arithmetic per step and the rate a warm epoch ran it at (TFLOP/s): where the
    step is convolution-bound, the figure a faster kernel must raise."""
    gflop = step_image_gflop(cfg, encoder, small)
    steps = -(-n_train // cfg.batch_size)
    rate = gflop * steps / train_s_per_epoch / 1000 if gflop and train_s_per_epoch else None
    return {'step_image_gflop': None if gflop is None else round(gflop, 1),
            'image_tflop_per_s': None if rate is None else round(rate, 2)}


def encoder_flags(encoder, args, folder):
    """The f_p flags of a run: random-weight encoders written once, read through the real loaders."""
    if encoder == 'SimCLR':
        path = os.path.join(folder, 'simclr.pt')
        if not os.path.exists(path):
            save_random_simclr('resnet18' if args.small else 'resnet50', path)
        return ['--fp_encoder', 'SimCLR', '--fp_checkpoint', path]
    arch = 'tiny' if args.small else encoder
    path = os.path.join(folder, arch.replace('/', '-') + '.pt')
    if not os.path.exists(path):
        save_random_clip(arch, path)
    return ['--fp_encoder', 'CLIP', '--CLIP_type', path]


def epoch_figures(seconds, epochs):
    """The run's seconds (utils/engine.epoch_timing): the first epoch and evaluation apart, the warm
    ones (the first's where a run had no other), and what the loop waited for each checkpoint."""
    def warm(key, first):
        return seconds[key] if seconds[key] is not None else seconds[first]
    return {'train_s_first_epoch': seconds['train_first_epoch'],
            'train_s_per_epoch': warm('train_per_warm_epoch', 'train_first_epoch'),
            'eval_s_first': seconds['evaluation_first'],
            'eval_s_each': warm('evaluation_per_warm', 'evaluation_first'),
            'checkpoint_s_each': seconds['checkpoint_wait_per_save'] or 0.0,
            'checkpoint_writes_s': seconds['checkpoint_writes']}


def paper_projection(row, args):
    """Seconds of the paper's 200 epochs: features, the first epoch and evaluation as measured, the rest
    at the warm rates, a checkpoint wait per epoch. Evaluations as the recipe schedules them."""
    paper = train_CIFAR.config(args.extra)  # the recipe may move warm-up or evaluation
    n_evals = sum(is_eval_epoch(e, paper.eval_from, paper.eval_every) for e in range(200))
    return (row['feature_extraction_s'] + row['train_s_first_epoch'] + 199 * row['train_s_per_epoch']
            + row['eval_s_first'] + (n_evals - 1) * row['eval_s_each'] + 200 * row['checkpoint_s_each'])


@contextlib.contextmanager
def profiled_last_epoch(ops, last):
    """Epoch `last` of the engine's training (warm: capture and autotuning are behind it) under
    torch.profiler; its top ops by self time go into `ops` (the first profiled run's only)."""
    original = Trainer.train_epoch

    def train_epoch(trainer, epoch):
        if ops or epoch != last:
            return original(trainer, epoch)
        loss, top = profiled(lambda: original(trainer, epoch), trainer.device)
        ops.extend(top)
        return loss
    Trainer.train_epoch = train_epoch
    try:
        yield
    finally:
        Trainer.train_epoch = original


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--encoders', nargs='+', default=['SimCLR', 'ViT-L/14'],
                   choices=['SimCLR', 'ViT-B/32', 'ViT-B/16', 'ViT-L/14'])
    p.add_argument('--diff_encoders', nargs='+', default=['resnet18'],
                   help="diffusion encoders to time; 'default': train_CIFAR.py's (or the recipe's) choice")
    p.add_argument('--modes', nargs='+', default=list(MODES), choices=list(MODES),
                   help='runs per --cuda_graph mode, in this order: eager (off), eval (graphed evaluation; the '
                        'default where the step runs image networks) and graphed (all)')
    p.add_argument('--kernels', nargs='+', default=['eager'], choices=FROZEN_KERNELS,
                   help='runs per --frozen_kernels way too, in this order (eager: the authors\' kernels)')
    p.add_argument('--nepoch', type=int, default=200)
    p.add_argument('--device', default='auto')
    p.add_argument('--small', action='store_true',
                   help="tiny stand-ins and a small dataset (CPU smoke test), without 'compiled' kernels (unless "
                        "the only ones asked for: a compile takes minutes of a CPU)")
    p.add_argument('--sizes', type=int, nargs=3, metavar=('TRAIN', 'VAL', 'TEST'),
                   help='random images per split (default 45000 5000 10000; 300 100 100 with --small)')
    p.add_argument('--data_root', help='real CIFAR-10: the folder holding cifar-10-batches-py/ '
                                       '(default: random images)')
    p.add_argument('--out', help='write the rows as JSON here')
    p.add_argument('--profile', action='store_true', help="profile each run's last epoch: its ops by self time")
    p.add_argument('extra', nargs=argparse.REMAINDER, help='further train_CIFAR.py flags after --')
    args = p.parse_args(argv)
    args.extra = [a for a in args.extra if a != '--']
    if args.small:
        args.kernels = [k for k in args.kernels if k != 'compiled'] or args.kernels
    device = resolve_device(args.device)
    if args.data_root:
        splits = load_cifar('cifar10', args.data_root, download=False)
    else:
        splits = synthetic_cifar(*(args.sizes or ((300, 100, 100) if args.small else (45000, 5000, 10000))))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for encoder in args.encoders:
            for diff_encoder in args.diff_encoders:
                features_s = None
                for mode in args.modes:
                    for kernels in args.kernels:
                        rows.append(one_run(encoder, diff_encoder, mode, args, folder, splits, features_s, kernels))
                        features_s = rows[-1]['feature_extraction_s']
                        free_memory()  # the run's Trainer (reference cycles) and its device memory, before the next
    print(f'device: {device_line(device)}')
    print('| f_p | diffusion encoder | mode | frozen kernels | features (s) | first epoch (s) | s/epoch | '
          'first evaluation (s) | s/evaluation | paper-length run (min) | authors (min) |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        proj = ' (projected)' if r['paper_length_is_projection'] else ''
        print(f"| {r['encoder']} | {r['diff_encoder']} | {r['mode']} | {r['frozen_kernels']} | "
              f"{r['feature_extraction_s']} | "
              f"{r['train_s_first_epoch']} | {r['train_s_per_epoch']} | {r['eval_s_first']} | {r['eval_s_each']} | "
              f"{r['paper_length_min']}{proj} | {r['authors_min']} |")
    for r in rows:
        print(json.dumps(r))
    if args.out:
        save_json({'device': device_line(device), 'rows': rows}, args.out)
    return rows


if __name__ == '__main__':
    main()
