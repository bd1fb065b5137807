"""Seconds per epoch of train_Clothing1M.py as the authors train it (the ResNet-50 diffusion encoder
fine-tuned on views decoded every epoch) and on the fast path (its features cached once).

    python -m benchmarks.file_training                        # one GPU: 14 classes × 400 JPEGs, 2 epochs
    python -m benchmarks.file_training --small --device cpu   # CPU smoke test

Writes a Clothing1M layout of generated JPEGs (benchmarks/layouts.py: --per_class images of each of 14
classes, --pixels high and 8 px wider, a class colour under Gaussian noise, with clean validation and
test lists), a random-weight CC_net.pt (the authors' f_p) through the
package's checkpoint format, and runs the real script with `--diff_encoder_weights random` (speed
does not depend on the weights) for each variant. It reports preparation, seconds of the first epoch
(cuDNN autotuning, CUDA graph capture, decoding workers started) and of a warm one, training images per
second, and projects the authors' Clothing1M run from them: 300 epochs of
10,000 images × 14 classes, every epoch evaluated on the 14,313 validation images and, when
validation improves, on the 10,526 test images (counted every epoch here: an upper bound).
"""
import argparse
import os
import tempfile

import train_Clothing1M
from benchmarks import layouts
from benchmarks.common import device_line, report
from utils.encoders.random_weights import save_random_cc
from utils.runtime.devices import free_memory, resolve_device

N_CLASS = 14
AUTHORS_RUN = dict(epochs=300, per_epoch=10_000 * N_CLASS, val=14_313, test=10_526)
VARIANTS = {'tuned (authors)': [], 'cached (improved)': ['--recipe', 'improved']}


def repeated_epoch_seconds(summary):
    """(seconds of a training epoch, of an evaluation) that a long run repeats: the warm ones where the run
    had a second epoch; the first (cuDNN autotuning, CUDA graph capture, workers started) otherwise."""
    s = summary['seconds']
    train = s['train_per_warm_epoch'] or s['train_first_epoch']
    return train, s['evaluation_per_warm'] or s['evaluation_first'] or 0.0


def projected_run_s(train_s, eval_s, n_train, n_eval):
    """The authors' 300-epoch run from this run's per-image rates (training, and evaluation)."""
    train_rate = n_train / train_s
    eval_rate = (2 * n_eval) / max(1e-9, eval_s)
    a = AUTHORS_RUN
    return a['epochs'] * (a['per_epoch'] / train_rate + (a['val'] + a['test']) / eval_rate)


def flag_value(argv, flag):
    """The last value `argv` gives `flag` (as argparse keeps it), or None."""
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]
    return values[-1] if values else train_Clothing1M.DEFAULTS.get(flag.lstrip('-'))


def random_weights(argv, folder):
    """Random weights for the networks the run builds (speed does not depend on them): the CC ResNet-50
    where it is f_p (the script's default), an ImageNet backbone where the diffusion encoder has one; a
    flag for a network the run does not build would be refused."""
    weights = []
    if (flag_value(argv, '--fp_encoder') or 'CC') == 'CC':
        weights += ['--fp_checkpoint', os.path.join(folder, 'CC_net.pt')]
    if str(flag_value(argv, '--diff_encoder')).endswith('_l'):
        weights += ['--diff_encoder_weights', 'random']
    return weights


def run_variant(name, flags, root, folder, args):
    common = ['--clothing1m_root', root, *random_weights(args.extra + flags, folder), '--nepoch', str(args.nepoch), '--warmup_epochs', '0',
              '--per_class', str(args.per_class), '--device', args.device, '--num_workers', str(args.workers),
              '--n_samples', '0', '--out_dir', os.path.join(folder, 'runs'), '--run_name', name.split()[0],
              '--cache_dir', os.path.join(folder, 'cache-' + name.split()[0]), *args.extra]
    summary, _ = train_Clothing1M.main(common + flags)
    n_train = args.per_class * N_CLASS
    train_s, eval_s = repeated_epoch_seconds(summary)
    return {'variant': name, 'flags': flags, 'prepare_s': summary['seconds']['prepare'],
            'train_s_first_epoch': summary['seconds']['train_first_epoch'],
            'train_s_per_epoch': train_s, 'warm': summary['seconds']['train_per_warm_epoch'] is not None,
            'train_images_per_s': round(n_train / train_s, 1), 'evaluation_s_per_epoch': round(eval_s, 2),
            'projected_authors_run_h': round(projected_run_s(train_s, eval_s, n_train, args.n_eval) / 3600, 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--per_class', type=int, default=400, help='training images of each of the 14 classes')
    p.add_argument('--n_eval', type=int, default=1000, help='validation and test images each')
    p.add_argument('--pixels', type=int, default=256, help='height of the generated JPEGs (8 px wider than high)')
    p.add_argument('--nepoch', type=int, default=2, help='the second and later epochs are the warm ones projected')
    p.add_argument('--workers', type=int, default=min(16, os.cpu_count() or 1), help='DataLoader decoding workers')
    p.add_argument('--device', default='auto')
    p.add_argument('--small', action='store_true',
                   help='CPU smoke test: 6 images a class, 32 px, ResNet-18, raw pixels as f_p')
    p.add_argument('--out', help='write the results JSON here')
    p.add_argument('extra', nargs='*', help='after --: more train_Clothing1M.py flags')
    args = p.parse_args(argv)
    if args.small:
        args.per_class, args.n_eval, args.pixels, args.workers = 6, 14, 40, 0
        args.extra = ['--image_size', '32', '--diff_encoder', 'resnet18_l', '--feature_dim', '32', '--k', '3',
                      '--batch_size', '28', '--fp_encoder', 'raw', *args.extra]
    device = resolve_device(args.device)
    args.device = str(device)
    with tempfile.TemporaryDirectory() as folder:
        # cc_select holds every training image with its true label, per_class of each class: the balanced
        # draw takes them all, per_class × 14 images an epoch
        root = layouts.clothing1m(os.path.join(folder, 'Clothing1M'), N_CLASS, args.per_class * N_CLASS, args.n_eval,
                                  args.n_eval, args.pixels, select_every=0)
        save_random_cc(os.path.join(folder, 'CC_net.pt'))
        rows = []
        for name, flags in VARIANTS.items():
            rows.append(run_variant(name, flags, root, folder, args))
            free_memory()  # the run's Trainer (reference cycles) and its device memory, before the next
    result = {'device': device_line(device), 'images': {'train': args.per_class * N_CLASS, 'val': args.n_eval,
                                                       'test': args.n_eval, 'pixels': args.pixels},
              'epochs': args.nepoch, 'authors_run': AUTHORS_RUN, 'rows': rows}
    return report(result, args.out, indent=1)


if __name__ == '__main__':
    main()
