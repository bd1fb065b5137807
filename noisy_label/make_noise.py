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
dataset, noise type, requested and realised rate, factor, seed, η-classifier accuracy, the file's sha1 and
length, the settings that decide its labels, command.
The η classifier (PreAct-ResNet-34, 25 epochs, as the authors) is trained once per (dataset, training
images, architecture, epochs, batch size, learning rate, seed) and its probabilities cached in --cache_dir
(eta_tag). A flag the command does
not read is refused, not ignored: the η classifier's flags where nothing is trained (hybrid), --dataset,
--type and --rate where the files are fixed (cifar10-set), --base, --kind, --inputs_dir outside a hybrid.

A file is written only where nothing is, or over make_noise's own earlier output (a `.npy` and the `.json`
sidecar make_noise wrote beside it, naming it; running a command again rewrites its files): anything else at
a name the command writes (a user's file, a `.npy` without make_noise's sidecar) is refused before any work.
The sidecar records the `.npy`'s sha1, so labels changed in place are the user's and are refused too. A
sidecar from before sha1s were recorded can check less: its `.npy` is taken for make_noise's only where it
holds the `n` labels the sidecar records and is no newer than the sidecar (written just after it); a file
that fails either is refused, one edited in place that still passes both cannot be told.

Nor is make_noise's own file written over by a command of other settings: a name does not carry them all
(--n_train, the η classifier's --arch, --nepoch, --batch_size, --lr), and a training run that used the file
would silently no longer match it. The sidecar records what decides the labels (file_settings; not --device
nor the folders), and a command whose settings differ is refused before any work, naming them. A sidecar
from before settings were recorded is read by its recorded command, parsed as today's make_noise parses it;
one that does not parse, or does not write that name today, has settings that cannot be told: refused.

Each name is checked and written holding its lock (an flock on `.<name>.lock` in --out_dir): a second
make_noise writing the same name at that moment is refused, naming the first, rather than interleaving its
`.npy` with the other's sidecar.
"""
import utils.runs.startup  # noqa: F401  first, before torch loads: a Ctrl-C meanwhile ends in one line

import argparse
import contextlib
import fcntl
import io
import math
import os
import sys

import numpy as np
import torch

from utils.data.cifar import CIFAR_N_TRAIN, load_named
from utils.classifier import accuracy, fit_classifier, predict_proba
from utils.data.noise import NOISE_DIR, generated_labels, noise_rate, resolve_noisy_labels
from utils.data.pmd import pmd_noise, top_two
from utils.errors import NoiseError, SetupError
from utils.networks import CLASSIFIERS
from utils.runs.checks import config_problems
from utils.runs.cli import Parser, run_cli
from utils.runs.config import HelpFormatter, given_flags
from utils.runs.folders import check_writable, same_file
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
# the η classifier's flags that decide its probabilities, and so a PMD file's labels (file_settings)
ETA_FLAGS = ('arch', 'nepoch', 'batch_size', 'lr')
READERS = {**dict.fromkeys((*ETA_FLAGS, 'device', 'cache_dir'), TRAINS),
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
    path = os.path.join(args.cache_dir, eta_tag(args, splits) + '.npz')
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


def eta_tag(args, splits):
    """The name of the η cache: every setting that decides η (ETA_FLAGS), the batch size and learning rate
    only where not the defaults, so caches named before they were keep their names (such a cache trained
    with other values cannot be told; one trained now is named by them, and never read for the defaults)."""
    tag = f'eta_{splits.name}_n{len(splits.train_clean)}_{args.arch}_e{args.nepoch}_s{args.seed}'
    defaults = parser()
    for flag, short in (('batch_size', 'b'), ('lr', 'lr')):
        if getattr(args, flag) != defaults.get_default(flag):
            tag += f'_{short}{getattr(args, flag)}'
    return tag


# how every sidecar's command begins (main): what tells make_noise's own files from anyone else's
COMMAND = 'python -m noisy_label.make_noise'


def is_own_output(out_dir, name):
    """Whether `name`.npy / `name`.json in out_dir are make_noise's own earlier output: the sidecar is one
    make_noise writes (its command is make_noise's, its file is `name`.npy) and the .npy, if there, the
    file it says was written (npy_problem)."""
    side, npy = load_json(os.path.join(out_dir, name + '.json')), os.path.join(out_dir, name + '.npy')
    if not own_sidecar(side, name):
        return False
    return not os.path.lexists(npy) or npy_problem(out_dir, name, side) is None


def own_sidecar(side, name):
    """Whether `side` (a sidecar's JSON) is one make_noise wrote for `name`.npy."""
    command = side.get('command')
    return isinstance(command, str) and command.startswith(COMMAND + ' ') and side.get('file') == name + '.npy'


def npy_problem(out_dir, name, side):
    """Why `name`.npy is not the file make_noise's sidecar `side` says was written (a phrase); None where it
    is. The sidecar records its sha1. One from before it did can check less (the module docstring): the
    labels it records the number of, and no newer than the sidecar, which was written just after them."""
    npy, json_path = (os.path.join(out_dir, name + ext) for ext in ('.npy', '.json'))
    if not os.path.isfile(npy):
        return 'not a file make_noise wrote'
    if 'sha1' in side:
        return None if side['sha1'] == file_digest(npy) else \
            f'changed since make_noise wrote it: {name}.json records other contents'
    if label_count(npy) != side.get('n'):
        return f'not the {side.get("n")} labels {name}.json records: changed since make_noise wrote it'
    if os.stat(npy).st_mtime_ns > os.stat(json_path).st_mtime_ns:
        return (f'changed since make_noise wrote it: it is newer than {name}.json, which is from before '
                f'make_noise recorded sha1s')
    return None


def label_count(npy):
    """How many labels the .npy file holds (its header, mapped, not read); None where it is not one array."""
    try:
        array = np.load(npy, mmap_mode='r', allow_pickle=False)
    except (OSError, ValueError):
        return None
    return len(array) if isinstance(array, np.ndarray) and array.ndim == 1 else None


def check_not_foreign(out_dir, name):
    """Refuse, naming the first file in the way, to write `name` (a .npy and its .json sidecar) over anything
    that is not make_noise's own earlier output (is_own_output): a user's file is never replaced."""
    there = [os.path.join(out_dir, name + ext) for ext in ('.npy', '.json')
             if os.path.lexists(os.path.join(out_dir, name + ext))]
    if there and not is_own_output(out_dir, name):
        raise SetupError(f'{there[0]} already exists ({foreign_reason(there[0], name)}); move it away or '
                         f'choose another --out_dir')


def foreign_reason(path, name):
    """Why the file at `path`, in the way of `name`, is not make_noise's (check_not_foreign)."""
    if path.endswith('.json'):
        return 'not a sidecar make_noise wrote'
    out_dir, side = os.path.dirname(path), os.path.join(os.path.dirname(path), name + '.json')
    if own_sidecar(load_json(side), name):  # make_noise's sidecar: the labels are not those it records
        return npy_problem(out_dir, name, load_json(side))
    if not os.path.isfile(path):
        return 'not a file make_noise wrote'
    return (f'{name}.json beside it is not the sidecar make_noise writes' if os.path.lexists(side) else
            f'no sidecar {name}.json beside it') + ': not a file make_noise wrote'


def file_settings(args, command, dataset, which, rate, base=None):
    """What decides the labels of one file `command` ('pmd' or 'hybrid') makes, as its sidecar records it;
    `which` is the PMD type or the hybrid's kind. Not where it runs or the folders it reads (--device,
    --data_root, --cache_dir), nor a hybrid's --inputs_dir: a published base is verified by its hash, the
    same labels from any folder. digits has its own fixed split, which --n_train does not change."""
    common = {'command': command, 'dataset': dataset, 'rate': rate, 'seed': args.seed,
              'n_train': None if dataset == 'digits' else args.n_train}
    if command == 'hybrid':
        return {**common, 'base': base, 'kind': which}
    return {**common, 'type': which, **{flag: getattr(args, flag) for flag in ETA_FLAGS}}


def file_name(settings):
    """The name of the file of `settings` (file_settings)."""
    s = settings
    if s['command'] == 'pmd':
        return pmd_name(s['dataset'], s['type'], s['rate'], s['seed'])
    return hybrid_names(s['base'], s['kind'], s['rate'], s['seed'])[1]


def target_settings(args):
    """The settings (file_settings) of every file the command writes, in the order it writes them."""
    if args.command == 'pmd':
        return [file_settings(args, 'pmd', args.dataset, args.type, args.rate)]
    if args.command == 'hybrid':
        return [file_settings(args, 'hybrid', args.dataset, args.kind, args.rate, args.base)]
    base = pmd_name('cifar10', 1, 0.35, args.seed)
    return [file_settings(args, what, 'cifar10', which, rate, base) for what, which, rate in CIFAR10_SET]


def check_may_write(out_dir, targets):
    """Refuse to write any of `targets` (file_settings) over what is not make_noise's own (check_not_foreign)
    or over its own file of other settings (check_same_settings)."""
    for settings in targets:
        name = file_name(settings)
        check_not_foreign(out_dir, name)
        check_same_settings(out_dir, name, settings)


def check_same_settings(out_dir, name, settings):
    """Refuse to write over make_noise's own `name`.npy made with other settings, naming them: a training run
    that used the file would no longer match it. Only the .npy is kept so: a sidecar alone keeps no labels."""
    npy = os.path.join(out_dir, name + '.npy')
    if not os.path.lexists(npy):
        return
    side = load_json(os.path.join(out_dir, name + '.json'))  # make_noise's own: check_not_foreign passed
    recorded = recorded_settings(side, name)
    fix = f'move it and {name}.json away, or choose another --out_dir'
    if recorded is None:
        raise SetupError(f'{npy} already exists, made by `{side["command"]}`, whose settings cannot be told (a '
                         f'sidecar from before make_noise recorded them, of a command that does not write '
                         f'{name} today); {fix}')
    differ = [f'--{key} {shown(value)} here, {shown(recorded.get(key))} there' for key, value in settings.items()
              if recorded.get(key, ...) != value]
    if differ:
        raise SetupError(f'{npy} already exists, made with other settings ({"; ".join(differ)}): a run trained '
                         f'on it would no longer match it; {fix}')


def shown(value):
    return 'unused' if value is None else value  # n_train, which digits does not read


def recorded_settings(side, name):
    """The settings (file_settings) make_noise's sidecar `side` records for `name`. A sidecar from before they
    were recorded gives those of its recorded command, parsed as main parses it today, a flag's prefix
    taken for it as then (the defaults of the flags that decide the labels have not changed since
    sidecars were first written); None where that
    does not parse (--epochs, since renamed --nepoch) or does not write `name` today (a rate named otherwise
    then): its settings cannot be told."""
    if 'settings' in side:
        return side['settings'] if isinstance(side['settings'], dict) else None
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # a usage error here is the old command's, not ours
            # main joined the argv with spaces; a sidecar without settings predates whole-name flags
            args = parsed(side['command'][len(COMMAND):].split(), allow_abbrev=True)
        return {file_name(settings): settings for settings in target_settings(args)}.get(name)
    except (SystemExit, SetupError):
        return None


@contextlib.contextmanager
def name_lock(out_dir, name, command):
    """Hold `name`'s lock in out_dir (an flock on `.<name>.lock`, made where absent) while the block runs:
    one make_noise at a time checks and writes a name, so two cannot interleave one's .npy with the other's
    sidecar. Refused, not waited for, where another holds it (after waiting, it would only be refused at
    the check or write over the other's file). The holder writes its pid and command there for that
    refusal to name it, and removes the file before letting go; a process that opened it meanwhile then
    holds a removed file, and locks the one there now (as utils/pretraining/export.py's export_lock)."""
    path = os.path.join(out_dir, f'.{name}.lock')
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 2000).decode(errors='replace').strip() or 'its pid not written yet'
            os.close(fd)
            raise SetupError(f'{os.path.join(out_dir, name)}.npy is being written by another make_noise right now '
                             f'({holder}); wait for it to finish and run again, or choose another --out_dir') \
                from None
        if same_file(fd, path):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)  # a killed holder's words are not ours
        os.write(fd, f'pid {os.getpid()}: {command}'.encode())
        yield
    finally:
        os.remove(path)
        os.close(fd)


def write_noise(labels, settings, sidecar, out_dir, command):
    """Write `labels` as the file of `settings` (file_settings) with its sidecar, holding its lock from the
    check to the last write."""
    name = file_name(settings)
    os.makedirs(out_dir, exist_ok=True)
    with name_lock(out_dir, name, command):
        # checked again, under the lock: the check before the work may be a training run old, and another
        # make_noise may have written the name since
        check_may_write(out_dir, [settings])
        path = os.path.join(out_dir, name + '.npy')
        save_npy(np.asarray(labels, dtype=np.int64), path)
        save_json({**sidecar, 'file': name + '.npy', 'sha1': file_digest(path), 'n': int(len(labels)),
                   'settings': settings, 'command': command}, os.path.join(out_dir, name + '.json'))
    print(f'{path}: realised rate {sidecar["realised_rate"]:.4f} (requested {sidecar["requested_rate"]})')
    return path


def make_pmd(args, splits, pmd_type, rate, eta=None, facts=None):
    if eta is None:
        eta, facts = class_probabilities(args, splits)
    clean = splits.train_clean.numpy()
    try:
        labels, factor, realised = pmd_noise(eta, clean, pmd_type, rate, seed=args.seed)
    except NoiseError as exc:  # the rates PMD reaches are the η classifier's: say how well it fits
        raise NoiseError(f'{exc}. The η classifier ({args.arch}, {args.nepoch} epochs) fits the clean training '
                         f'labels at {facts["train_acc"]:.1%} (validation {facts["val_acc"]:.1%}): an underfit '
                         f'one reaches other rates; a larger --nepoch trains it further') from None
    _, _, margin = top_two(eta)
    return write_noise(labels, file_settings(args, 'pmd', splits.name, pmd_type, rate), {
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
    drawn_as, _ = hybrid_names(base, kind, rate, args.seed)
    clean = splits.train_clean.numpy()
    resolve = dict(seed=args.seed, coarse_of_class=splits.coarse_of_class, noise_dir=args.out_dir,
                   inputs_dir=args.inputs_dir)
    base_labels, _ = resolve_noisy_labels(base, len(clean), clean, splits.n_class, **resolve)
    # drawn afresh with this seed, never read back from --out_dir: a file there may hold other draws
    # (as `--noise_seed` draws `drawn_as` in training, where no file of that name exists)
    labels, source = generated_labels(drawn_as, len(clean), clean, splits.n_class, cifar_n_dirs=(), **resolve)
    return write_noise(labels, file_settings(args, 'hybrid', splits.name, kind, rate, base), {
        'dataset': splits.name, 'noise': source, 'base': base, 'kind': 'uniform' if kind == 'U' else 'asymmetric',
        'requested_rate': rate, 'realised_rate': noise_rate(labels, base_labels),
        'rate_vs_clean': noise_rate(labels, clean), 'base_rate_vs_clean': noise_rate(base_labels, clean),
        'seed': args.seed}, args.out_dir, args.command_line)


def parser(allow_abbrev=False):
    p = Parser(description=__doc__, formatter_class=HelpFormatter, allow_abbrev=allow_abbrev)
    p.add_argument('command', choices=('pmd', 'hybrid', 'cifar10-set'), help='what to make (the docstring above)')
    p.add_argument('--dataset', default='cifar10', choices=('cifar10', 'cifar100', 'digits'), help='pmd, hybrid')
    p.add_argument('--type', type=int, default=1, choices=(1, 2, 3), help='PMD type')
    p.add_argument('--rate', type=float, default=0.35, help='requested noise rate: [0, 1) for pmd, [0, 1] hybrid')
    p.add_argument('--base', help='hybrid: the noise name to add i.i.d. noise to')
    p.add_argument('--kind', choices=('U', 'A'), help='hybrid: uniform or asymmetric')
    p.add_argument('--arch', default='preact_resnet34', choices=sorted(CLASSIFIERS), help='η classifier')
    p.add_argument('--nepoch', type=int, default=25, help="η classifier's training epochs")
    p.add_argument('--batch_size', type=int, default=128, help="η classifier's batch size")
    p.add_argument('--lr', type=float, default=0.1, help="η classifier's learning rate")
    p.add_argument('--seed', type=int, default=0, help="the η classifier's and the noise's seed")
    p.add_argument('--device', default='auto', help='where the η classifier trains: auto, cpu, cuda, cuda:N')
    p.add_argument('--data_root', default='./data', help='folder holding (or receiving) CIFAR')
    p.add_argument('--download', default=True, action=argparse.BooleanOptionalAction,
                   help='download CIFAR when it is not under --data_root')
    p.add_argument('--n_train', type=int, default=CIFAR_N_TRAIN, help='noisy-label training images')
    p.add_argument('--out_dir', default=NOISE_DIR, help='where the .npy files and their sidecars go')
    p.add_argument('--inputs_dir', default=None, help='where published base files are kept (utils/storage/published.py)')
    p.add_argument('--cache_dir', default='./cache', help="where the η classifier's probabilities are cached")
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
        if os.sep in args.base or args.base.endswith('.npy'):  # the hybrid's own name is made from it
            raise SetupError(f'--base {args.base} is a path; --base takes a noise name (a published one, or a file '
                             f'NAME.npy of --out_dir): copy the file into --out_dir and pass its name without .npy')
    else:
        check_writable(args.cache_dir, '--cache_dir')
    targets = target_settings(args)  # a hybrid of a published name is refused here
    check_writable(args.out_dir, '--out_dir')
    check_may_write(args.out_dir, targets)


def parsed(argv, allow_abbrev=False):
    """The command's flags as make_noise reads them, with its command line and the flags typed
    (`allow_abbrev`: a flag's prefix taken for it, as make_noise read its commands before 2026-12-06)."""
    args = parser(allow_abbrev).parse_args(argv)
    args.command_line = f'{COMMAND} ' + ' '.join(argv)
    args.command_line_flags = given_flags(parser(allow_abbrev), argv)  # the flags typed: unread_flag_problems
    if args.command == 'cifar10-set':
        args.dataset = 'cifar10'
    return args


def main(argv=None):
    args = parsed(sys.argv[1:] if argv is None else argv)
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
