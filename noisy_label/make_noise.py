"""Make noise files: PMD noise from a classifier trained on the clean labels, i.i.d. noise on top.

    python -m noisy_label.make_noise pmd --dataset cifar10 --type 1 --rate 0.35     # cifar10-1-0.35-s0.npy
    python -m noisy_label.make_noise hybrid --base cifar10-1-0.35-s0 --kind U --rate 0.3
    python -m noisy_label.make_noise cifar10-set     # our own counterparts of the paper's CIFAR-10 files

The paper's own files are published and fetched by name (`python -m noisy_label.fetch`); a file made
here never takes a published name: PMD files carry the seed they were drawn with (`-s<seed>`), and a
hybrid whose name is published is refused (build it on a base made here instead).

Each `.npy` (the noisy label of each of the first 45,000 training images) gets a `.json` sidecar:
dataset, noise type, requested and realised rate, factor, seed, η-classifier accuracy, command.
The η classifier (PreAct-ResNet-34, 25 epochs, as the authors) is trained once per
(dataset, architecture, epochs, seed) and its probabilities cached in --cache_dir.
"""
import argparse
import os
import sys

import numpy as np
import torch

from utils.data.cifar import CIFAR_N_TRAIN, load_named
from utils.data.classifier import accuracy, fit_classifier, predict_proba
from utils.data.noise import NOISE_DIR, noise_rate, resolve_noisy_labels
from utils.data.pmd import pmd_noise, top_two
from utils.errors import SetupError
from utils.runs.cli import Parser, run_cli
from utils.runs.outputs import save_npy
from utils.runtime.devices import resolve_device
from utils.storage.published import is_published
from utils.storage.saving import save_json

# PMD (type, rate), then hybrids (kind, rate) on the type-I 35% file made in the same command.
CIFAR10_SET = [('pmd', 1, 0.35), ('pmd', 1, 0.70), ('pmd', 2, 0.35), ('pmd', 3, 0.35),
               ('hybrid', 'U', 0.3), ('hybrid', 'U', 0.6), ('hybrid', 'A', 0.3)]


def rate_tag(rate):
    return f'{rate:.2f}'


def pmd_name(dataset, pmd_type, rate, seed):
    """`<dataset>-<type>-<rate>-s<seed>`: the published naming plus the seed, so never a published name."""
    return f'{dataset}-{pmd_type}-{rate_tag(rate)}-s{seed}'


def class_probabilities(args, splits):
    """η(x) for every training image from a classifier trained on the clean labels (cached)."""
    os.makedirs(args.cache_dir, exist_ok=True)
    tag = f'eta_{splits.name}_n{len(splits.train_clean)}_{args.arch}_e{args.nepoch}_s{args.seed}'
    path = os.path.join(args.cache_dir, tag + '.npz')
    if os.path.isfile(path):
        blob = np.load(path)
        return blob['eta'], {k: float(blob[k]) for k in ('train_acc', 'val_acc', 'test_acc')}
    device = resolve_device(args.device)
    model, _ = fit_classifier(splits.train_images, splits.train_clean, splits.n_class, splits.mean, splits.std,
                              arch=args.arch, epochs=args.nepoch, batch_size=args.batch_size, lr=args.lr,
                              device=device, seed=args.seed)
    eta = predict_proba(model, splits.train_images, splits.mean, splits.std).cpu().numpy()
    facts = {'train_acc': float((eta.argmax(1) == splits.train_clean.numpy()).mean()),
             'val_acc': accuracy(model, splits.val_images, splits.val_labels, splits.mean, splits.std),
             'test_acc': accuracy(model, splits.test_images, splits.test_labels, splits.mean, splits.std)}
    np.savez(path, eta=eta, **facts)
    return eta, facts


def write_noise(labels, name, sidecar, out_dir, command):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name + '.npy')
    save_npy(np.asarray(labels, dtype=np.int64), path)
    save_json({**sidecar, 'file': name + '.npy', 'n': int(len(labels)), 'command': command},
              os.path.join(out_dir, name + '.json'))
    print(f'{path}: realised rate {sidecar["realised_rate"]:.4f} (requested {sidecar["requested_rate"]})')
    return path


def make_pmd(args, splits, pmd_type, rate, eta=None, facts=None):
    if eta is None:
        eta, facts = class_probabilities(args, splits)
    clean = splits.train_clean.numpy()
    labels, factor, realised = pmd_noise(eta, clean, pmd_type, rate, seed=args.seed)
    _, _, margin = top_two(eta)
    name = pmd_name(splits.name, pmd_type, rate, args.seed)
    return write_noise(labels, name, {
        'dataset': splits.name, 'noise': f'PMD type {pmd_type}', 'pmd_type': pmd_type, 'requested_rate': rate,
        'realised_rate': realised, 'factor': factor, 'seed': args.seed,
        'eta_classifier': {'arch': args.arch, 'epochs': args.nepoch, **facts},
        'mean_margin': float(margin.mean())}, args.out_dir, args.command_line)


def hybrid_name(base, kind, rate, seed):
    """`<base>_<kind>_<rate>`, the authors' naming; refused where that is a published file's name."""
    name = f'{base}_{kind}_{rate_tag(rate).rstrip("0").rstrip(".")}'
    if is_published(name):
        raise SetupError(f'{name} is a published file (python -m noisy_label.fetch {name}); to make your own, '
                 f'build it on a base made here, e.g. --base {base}-s{seed}')
    return name


def make_hybrid(args, splits, base, kind, rate):
    name = hybrid_name(base, kind, rate, args.seed)
    clean = splits.train_clean.numpy()
    resolve = dict(seed=args.seed, coarse_of_class=splits.coarse_of_class, noise_dir=args.out_dir,
                   inputs_dir=args.inputs_dir)
    base_labels, _ = resolve_noisy_labels(base, len(clean), clean, splits.n_class, **resolve)
    labels, source = resolve_noisy_labels(name, len(clean), clean, splits.n_class, **resolve)
    return write_noise(labels, name, {
        'dataset': splits.name, 'noise': source, 'base': base, 'kind': 'uniform' if kind == 'U' else 'asymmetric',
        'requested_rate': rate, 'realised_rate': noise_rate(labels, base_labels),
        'rate_vs_clean': noise_rate(labels, clean), 'base_rate_vs_clean': noise_rate(base_labels, clean),
        'seed': args.seed}, args.out_dir, args.command_line)


def parser():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('command', choices=('pmd', 'hybrid', 'cifar10-set'))
    p.add_argument('--dataset', default='cifar10', choices=('cifar10', 'cifar100', 'digits'))
    p.add_argument('--type', type=int, default=1, choices=(1, 2, 3), help='PMD type')
    p.add_argument('--rate', type=float, default=0.35, help='requested noise rate')
    p.add_argument('--base', help='hybrid: the noise name to add i.i.d. noise to')
    p.add_argument('--kind', choices=('U', 'A'), help='hybrid: uniform or asymmetric')
    p.add_argument('--arch', default='preact_resnet34', help='η classifier')
    p.add_argument('--nepoch', type=int, default=25)
    p.add_argument('--batch_size', type=int, default=128)
    p.add_argument('--lr', type=float, default=0.1)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='auto')
    p.add_argument('--data_root', default='./data')
    p.add_argument('--download', default=True, action=argparse.BooleanOptionalAction)
    p.add_argument('--n_train', type=int, default=CIFAR_N_TRAIN, help='noisy-label training images')
    p.add_argument('--out_dir', default=NOISE_DIR)
    p.add_argument('--inputs_dir', default=None, help='where published base files are kept (utils/storage/published.py)')
    p.add_argument('--cache_dir', default='./cache')
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.command_line = 'python -m noisy_label.make_noise ' + ' '.join(argv)
    if args.command == 'cifar10-set':
        args.dataset = 'cifar10'
    if args.command == 'hybrid':  # checked before any work
        if not args.base or not args.kind:
            raise SetupError('hybrid needs --base NAME and --kind U|A')
        hybrid_name(args.base, args.kind, args.rate, args.seed)
    splits = load_named(args.dataset, args.data_root, args.download, args.n_train)
    if args.command == 'pmd':
        return [make_pmd(args, splits, args.type, args.rate)]
    if args.command == 'hybrid':
        return [make_hybrid(args, splits, args.base, args.kind, args.rate)]
    eta, facts = class_probabilities(args, splits)
    written = []
    for what, *item in CIFAR10_SET:
        if what == 'pmd':
            written.append(make_pmd(args, splits, *item, eta, facts))
        else:
            written.append(make_hybrid(args, splits, pmd_name('cifar10', 1, 0.35, args.seed), *item))
    return written


if __name__ == '__main__':
    torch.backends.cudnn.benchmark = True
    run_cli(main)
