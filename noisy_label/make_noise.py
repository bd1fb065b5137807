"""Make noise files: PMD noise from a classifier trained on the clean labels, i.i.d. noise on top.

    python -m noisy_label.make_noise pmd --dataset cifar10 --type 1 --rate 0.35     # cifar10-1-0.35-s0.npy
    python -m noisy_label.make_noise hybrid --base cifar10-1-0.35-s0 --kind U --rate 0.3
    python -m noisy_label.make_noise cifar10-set     # our own counterparts of the paper's CIFAR-10 files

The paper's own files are published and fetched by name (`python -m noisy_label.fetch`); a file made
here never takes a published name: PMD files carry the seed they were drawn with (`-s<seed>`), and a
hybrid whose name is published is refused (build it on a base made here instead). A hybrid keeps the
authors' name `<base>_<kind>_<rate>` for --seed 0 and takes `-s<seed>` after it for another seed
(`cifar10-1-0.35-s0_U_0.3-s1`), so each seed has its own file. A rate is named with as many decimals
as it has (two at least: `0.35`, `0.355`), so a name reads back as exactly the rate requested.

Each `.npy` (the noisy label of each of the first 45,000 training images) gets a `.json` sidecar:
dataset, noise type, requested and realised rate, factor, seed, η-classifier accuracy, command.
The η classifier (PreAct-ResNet-34, 25 epochs, as the authors) is trained once per
(dataset, architecture, epochs, seed) and its probabilities cached in --cache_dir. A flag the command does
not read is refused, not ignored: the η classifier's flags where nothing is trained (hybrid), --dataset,
--type and --rate where the files are fixed (cifar10-set), --base, --kind, --inputs_dir outside a hybrid.

A file is written only where nothing is, or over make_noise's own earlier output (a `.npy` and the `.json`
sidecar make_noise wrote beside it, naming it; running a command again rewrites its files): anything else at
a name the command writes (a user's file, a `.npy` without make_noise's sidecar) is refused before any work.
"""
import argparse
import math
import os
import sys

import numpy as np
import torch

from utils.data.cifar import CIFAR_N_TRAIN, load_named
from utils.classifier import accuracy, fit_classifier, predict_proba
from utils.data.noise import NOISE_DIR, generated_labels, noise_rate, resolve_noisy_labels
from utils.data.pmd import pmd_noise, top_two
from utils.errors import SetupError
from utils.networks import CLASSIFIERS
from utils.runs.checks import config_problems
from utils.runs.cli import Parser, run_cli
from utils.runs.config import given_flags
from utils.runs.folders import check_writable
from utils.runs.outputs import save_npy
from utils.runtime.devices import resolve_device
from utils.storage.fingerprints import file_digest
from utils.storage.loading import load_json
from utils.storage.published import is_published
from utils.storage.saving import save_json

# PMD (type, rate), then hybrids (kind, rate) on the type-I 35% file made in the same command.
CIFAR10_SET = [('pmd', 1, 0.35), ('pmd', 1, 0.70), ('pmd', 2, 0.35), ('pmd', 3, 0.35),
               ('hybrid', 'U', 0.3), ('hybrid', 'U', 0.6), ('hybrid', 'A', 0.3)]

# The commands that read each flag not all of them read (a flag not listed: all); given to another command,
# the flag would be ignored, and is refused instead. Only pmd and cifar10-set train the η classifier.
TRAINS = ('pmd', 'cifar10-set')
READERS = {**dict.fromkeys(('arch', 'nepoch', 'batch_size', 'lr', 'device', 'cache_dir'), TRAINS),
           'dataset': ('pmd', 'hybrid'), 'rate': ('pmd', 'hybrid'), 'type': ('pmd',),
           'base': ('hybrid',), 'kind': ('hybrid',), 'inputs_dir': ('hybrid',)}
# what each command does instead, for the refusal to say why the flag has no effect there
OWN_WAY = {'pmd': 'pmd makes PMD noise, no hybrid', 'hybrid': 'hybrid trains nothing: it adds noise to --base',
           'cifar10-set': 'cifar10-set makes its fixed CIFAR-10 list'}


def rate_tag(rate):
    """The rate as names carry it: two decimals (`0.35`, `0.70`, the published names), more where the rate
    has more, so the name never rounds it (a hybrid at 0.001 was named, and then drawn at, 0)."""
    tag = f'{rate:.2f}'
    # positional and shortest-exact: the noise names' pattern (utils/data/noise.py) reads no exponent
    return tag if float(tag) == rate else np.format_float_positional(rate, unique=True, trim='-')


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


# how every sidecar's command begins (main): what tells make_noise's own files from anyone else's
COMMAND = 'python -m noisy_label.make_noise'


def is_own_output(out_dir, name):
    """Whether `name`.npy / `name`.json in out_dir are make_noise's own earlier output: the sidecar is one
    make_noise writes (its command is make_noise's, its file is `name`.npy) and the .npy, if there, a file
    holding what it wrote (its sha1, where the sidecar records one: an older sidecar does not)."""
    side, npy = load_json(os.path.join(out_dir, name + '.json')), os.path.join(out_dir, name + '.npy')
    if not own_sidecar(side, name):
        return False
    if not os.path.lexists(npy):
        return True
    recorded = side.get('sha1')
    return os.path.isfile(npy) and (recorded is None or recorded == file_digest(npy))


def own_sidecar(side, name):
    """Whether `side` (a sidecar's JSON) is one make_noise wrote for `name`.npy."""
    command = side.get('command')
    return isinstance(command, str) and command.startswith(COMMAND + ' ') and side.get('file') == name + '.npy'


def check_not_foreign(out_dir, names):
    """Refuse, naming the first file in the way, to write `names` (each a .npy and its .json sidecar) over
    anything that is not make_noise's own earlier output (is_own_output): a user's file is never replaced."""
    for name in names:
        there = [os.path.join(out_dir, name + ext) for ext in ('.npy', '.json')
                 if os.path.lexists(os.path.join(out_dir, name + ext))]
        if there and not is_own_output(out_dir, name):
            raise SetupError(f'{there[0]} already exists ({foreign_reason(there[0], name)}); move it away or '
                             f'choose another --out_dir')


def foreign_reason(path, name):
    """Why the file at `path`, in the way of `name`, is not make_noise's (check_not_foreign)."""
    if path.endswith('.json'):
        return 'not a sidecar make_noise wrote'
    if not os.path.isfile(path):
        return 'not a file make_noise wrote'
    side = os.path.join(os.path.dirname(path), name + '.json')
    if own_sidecar(load_json(side), name):  # make_noise's sidecar: the labels were changed since
        return f'changed since make_noise wrote it: {name}.json records other contents'
    return (f'{name}.json beside it is not the sidecar make_noise writes' if os.path.lexists(side) else
            f'no sidecar {name}.json beside it') + ': not a file make_noise wrote'


def target_names(args):
    """The name of every file the command writes, in the order it writes them."""
    if args.command == 'pmd':
        return [pmd_name(args.dataset, args.type, args.rate, args.seed)]
    if args.command == 'hybrid':
        return [hybrid_names(args.base, args.kind, args.rate, args.seed)[1]]
    base = pmd_name('cifar10', 1, 0.35, args.seed)
    return [pmd_name('cifar10', *item, args.seed) if what == 'pmd' else hybrid_names(base, *item, args.seed)[1]
            for what, *item in CIFAR10_SET]


def write_noise(labels, name, sidecar, out_dir, command):
    # checked again with the writes: the check before the work may be a training run old
    check_not_foreign(out_dir, [name])
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name + '.npy')
    save_npy(np.asarray(labels, dtype=np.int64), path)
    save_json({**sidecar, 'file': name + '.npy', 'sha1': file_digest(path), 'n': int(len(labels)),
               'command': command}, os.path.join(out_dir, name + '.json'))
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


def hybrid_names(base, kind, rate, seed):
    """(the name the noise is drawn under, the file's name): `<base>_<kind>_<rate>`, the authors' naming,
    and the same for the file at seed 0; at another seed the file takes `-s<seed>` after it, as one name
    for every seed let a later seed read back and relabel an earlier seed's file. Refused where the
    authors' name is a published file's, whatever the seed: that name means the authors' file."""
    drawn_as = f'{base}_{kind}_{rate_tag(rate).rstrip("0").rstrip(".")}'
    if is_published(drawn_as):
        raise SetupError(f'{drawn_as} is a published file (python -m noisy_label.fetch {drawn_as}); to make your '
                         f'own, build it on a base made here, e.g. --base {base}-s{seed}')
    return drawn_as, drawn_as if seed == 0 else f'{drawn_as}-s{seed}'


def make_hybrid(args, splits, base, kind, rate):
    drawn_as, name = hybrid_names(base, kind, rate, args.seed)
    clean = splits.train_clean.numpy()
    resolve = dict(seed=args.seed, coarse_of_class=splits.coarse_of_class, noise_dir=args.out_dir,
                   inputs_dir=args.inputs_dir)
    base_labels, _ = resolve_noisy_labels(base, len(clean), clean, splits.n_class, **resolve)
    # drawn afresh with this seed, never read back from --out_dir: a file there may hold other draws
    # (as `--noise_seed` draws `drawn_as` in training, where no file of that name exists)
    labels, source = generated_labels(drawn_as, len(clean), clean, splits.n_class, cifar_n_dirs=(), **resolve)
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
    p.add_argument('--rate', type=float, default=0.35, help='requested noise rate: [0, 1) for pmd, [0, 1] hybrid')
    p.add_argument('--base', help='hybrid: the noise name to add i.i.d. noise to')
    p.add_argument('--kind', choices=('U', 'A'), help='hybrid: uniform or asymmetric')
    p.add_argument('--arch', default='preact_resnet34', choices=sorted(CLASSIFIERS), help='η classifier')
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


def reads(command, flag):
    """Whether `command` reads --flag: READERS says for the flags some commands ignore."""
    return command in READERS.get(flag, (command,))


def unread_flag_problems(args):
    """Each flag given that the command does not read (a hybrid's --lr, cifar10-set's --dataset cifar100,
    which made CIFAR-10 files all the same), worded as utils/runs/checks.ignored_flag_problems."""
    return [f'--{flag} applies to {" and ".join(READERS[flag])} only ({OWN_WAY[args.command]}); drop it'
            for flag in getattr(args, 'command_line_flags', ()) if not reads(args.command, flag)]


def as_read(args):
    """args with every flag the command does not read at its default, so that only what it reads is checked
    (a hybrid's --lr -1 was refused as a bad learning rate); given, such a flag is refused as unread."""
    defaults = parser()
    return argparse.Namespace(**{flag: value if reads(args.command, flag) else defaults.get_default(flag)
                                 for flag, value in vars(args).items()})


def flag_problems(args):
    """Every bad number among the flags, worded as utils/runs/checks words the training scripts'."""
    problems = config_problems(args)  # --nepoch, --batch_size, --lr, --seed in [0, 2**32 - 1], --device
    if args.n_train < 1:
        problems.append(f'--n_train {args.n_train} must be at least 1')
    if args.command != 'cifar10-set':  # which takes its own rates
        problems += rate_problems(args.command, args.rate)
    return problems


def rate_problems(command, rate):
    """PMD keeps the classifier's top class for some images, so it never reaches a rate of 1; i.i.d. noise
    on top may move every label, as a noise name's rate may be 1 (utils/data/noise.py). -0 is refused too:
    it would name a file `-0.00`."""
    positive = math.copysign(1, rate) > 0  # False for -0.0 as for any negative rate; NaN fails the range
    if command == 'hybrid':
        return [] if positive and rate <= 1 else [f'--rate {rate} must be a number in [0, 1] for hybrid noise']
    return [] if positive and rate < 1 else [f'--rate {rate} must be a number in [0, 1) for PMD noise']


def check_flags(args):
    """Refuse bad flags in one line before any work: before data is read or the η classifier trained,
    where a bad rate, say, failed after the training or named a file after a NaN; and a name the command
    writes that holds a file make_noise did not write, which it replaced."""
    problems = unread_flag_problems(args) + flag_problems(as_read(args))
    if problems:
        raise SetupError('; '.join(problems))
    if args.command == 'hybrid':
        if not args.base or not args.kind:
            raise SetupError('hybrid needs --base NAME and --kind U|A')
    else:
        check_writable(args.cache_dir, '--cache_dir')
    names = target_names(args)  # a hybrid of a published name is refused here
    check_writable(args.out_dir, '--out_dir')
    check_not_foreign(args.out_dir, names)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.command_line = f'{COMMAND} ' + ' '.join(argv)
    args.command_line_flags = given_flags(parser(), argv)  # the flags typed, not defaulted: unread_flag_problems
    if args.command == 'cifar10-set':
        args.dataset = 'cifar10'
    check_flags(args)
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
