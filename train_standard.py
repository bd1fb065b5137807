"""The "Standard" baseline of the paper's tables: a classifier trained with cross-entropy on the
noisy labels, selected on the clean validation split and reported on the test split, like
LRA-diffusion, so every noise file can be scored both ways.

    python train_standard.py --noise_type cifar10-1-0.35 --arch preact_resnet34

Writes last.pt after every epoch, then history.json and summary.json, in OUT_DIR/<noise>_<arch>_s<seed>,
<noise> the noise name or the noise file's base name. A folder holding a finished run, or files no run
wrote, is refused. `--resume RUN_DIR` goes on from a stopped run's last finished epoch, exactly (the same
flags; --device may change).
"""
import utils.runs.startup  # noqa: F401  first, before torch loads: a Ctrl-C meanwhile ends in one line

import argparse
import json
import os
import time

import torch

from utils.data.cifar import CIFAR_FOLDERS, load_named
from utils.classifier import accuracy, fit_classifier
from utils.data.noise import dataset_of, noise_rate, resolve_noisy_labels
from utils.errors import ResumeRefused, SetupError
from utils.networks import CLASSIFIERS
from utils.runs.checks import check_config
from utils.runs.cli import Parser, run_cli
from utils.runs.config import HelpFormatter, given_flags
from utils.runs.folders import FINISHED, RunClaim, check_fresh_folder, check_no_foreign_files, check_writable
from utils.storage.fingerprints import tensor_fingerprint
from utils.storage.loading import load_torch
from utils.runtime.devices import device_description, resolve_device
from utils.storage.saving import save_json, save_torch


def parser():
    p = Parser(description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group('data and noise')
    g.add_argument('--noise_type', default='cifar10-1-0.35', help='as in train_CIFAR.py')
    g.add_argument('--noise_seed', type=int, default=0, help='seed of generated noise (as in train_CIFAR.py)')
    g.add_argument('--data_root', default='./data', help='folder holding (or receiving) CIFAR')
    g.add_argument('--download', default=True, action=argparse.BooleanOptionalAction,
                   help='download CIFAR when it is not under --data_root')
    g = p.add_argument_group('model and training')
    g.add_argument('--arch', default='preact_resnet34', choices=sorted(CLASSIFIERS), help='the classifier')
    g.add_argument('--nepoch', type=int, default=200, help='training epochs')
    g.add_argument('--batch_size', type=int, default=128, help='images per step')
    g.add_argument('--lr', type=float, default=0.1, help='peak SGD learning rate')
    g.add_argument('--seed', type=int, default=123, help='seed of the weights and the training draws')
    g = p.add_argument_group('computation and outputs')
    g.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    g.add_argument('--out_dir', default='./runs/standard', help='where the run writes its log and summary')
    g.add_argument('--resume', metavar='RUN_DIR', help='go on from the last finished epoch of the run in RUN_DIR')
    g.add_argument('--debug', action='store_true', help='show the traceback of a refusal')
    return p


def check_flags(args):
    """Every flag, before any data is read: the numbers, the dataset the noise names and --out_dir."""
    check_config(args)
    if dataset_of(args.noise_type) not in (*CIFAR_FOLDERS, 'digits'):
        raise SetupError(f'--noise_type {args.noise_type} names no dataset this script reads: a noise name or file '
                         f'name begins with cifar10, cifar100 or digits (e.g. cifar10-1-0.35, cifar10-mine.npy)')
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise SetupError(f'--out_dir {args.out_dir} is a file, not a folder; choose another --out_dir')


def plan_run_dir(args):
    """The run folder, always inside --out_dir, refused where a run finished or other files lie; nothing
    is made here (the claim makes it once the inputs are read)."""
    # a noise file's base name: its full path would place the folder outside --out_dir
    noise = os.path.basename(args.noise_type).removesuffix('.npy')
    run_dir = os.path.join(args.out_dir, f'{noise}_{args.arch}_s{args.seed}')
    if os.path.exists(os.path.join(run_dir, FINISHED)):
        raise SetupError(f'{run_dir} holds a finished run ({FINISHED}); choose another --out_dir or --seed, or '
                         f'delete that folder')
    check_fresh_folder(run_dir, other='--out_dir')
    check_writable(run_dir, '--out_dir')
    return run_dir


# flags a resume takes from its own command line: where it runs and where the data lies, what it is
# told to go on from (the training labels are checked by their fingerprint)
PER_COMMAND = ('resume', 'device', 'debug', 'out_dir', 'data_root', 'download')
STATE_FIELDS = ('epoch', 'model', 'optimizer', 'history', 'rng', 'best_val', 'best_weights')  # utils/classifier.py


def saved_flag_problems(config):
    """The run's recorded flags that its parser would not have given: absent, of another type or choice."""
    problems = []
    for action in parser()._actions:
        if not action.option_strings or action.dest in PER_COMMAND + ('help',):
            continue
        value = config.get(action.dest, KeyError)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is KeyError:
            problems.append(f'--{action.dest} is missing')
        elif (action.choices and value not in action.choices) or (action.type is int and not (
                number and value == int(value))) or (action.type is float and not number):
            problems.append(f'--{action.dest} {value!r} is not a value of the flag')
    return problems


def resumed_state(args, given):
    """The stopped run's last.pt and the run's flags (with this command's PER_COMMAND ones), refused in
    one line where it is absent, damaged or finished, or where a flag given (`given`) differs from the run's."""
    path = os.path.join(args.resume, 'last.pt')
    if os.path.exists(os.path.join(args.resume, 'best.pt')):  # a Standard run keeps its last epoch alone
        raise SetupError(f'--resume {args.resume} holds an LRA-diffusion run (best.pt), not a Standard one: resume '
                         f'it with the train_*.py script that made it')
    if os.path.exists(os.path.join(args.resume, FINISHED)):
        raise SetupError(f'--resume {args.resume} holds a finished run ({FINISHED}); there is nothing to go on with')
    if not os.path.isfile(path):
        raise SetupError(f'--resume {args.resume}: no last.pt there (not a Standard run, or no epoch finished); '
                         f'start a new run')
    state = load_torch(path, 'Standard checkpoint')
    if not isinstance(state, dict) or not isinstance(state.get('config'), dict) or 'labels' not in state:
        raise SetupError(f'{path} is not a checkpoint of train_standard.py; start a new run')
    problems = saved_flag_problems(state['config']) + [f'{name} is missing' for name in STATE_FIELDS
                                                        if name not in state]
    if problems:
        raise ResumeRefused(f'{path} is damaged or was edited ({"; ".join(problems[:3])}); start a new run')
    changed = [f'--{k} {getattr(args, k)!r} (the run has {state["config"].get(k)!r})' for k in sorted(given)
               if k not in PER_COMMAND and state['config'].get(k) != getattr(args, k)]
    if changed:
        raise SetupError(f'--resume {args.resume} cannot change {", ".join(changed)}: drop those flags to go on '
                         f'with the run\'s')
    return state, argparse.Namespace(**{**state['config'], **{k: getattr(args, k) for k in PER_COMMAND}})


def main(argv=None):
    args = parser().parse_args(argv)
    state = None
    if args.resume:
        state, args = resumed_state(args, given_flags(parser(), argv))
    check_flags(args)
    run_dir = args.resume or plan_run_dir(args)
    device = resolve_device(args.device)
    splits = load_named(dataset_of(args.noise_type), args.data_root, args.download)
    clean = splits.train_clean.numpy()
    noisy, source = resolve_noisy_labels(args.noise_type, len(clean), clean, splits.n_class, seed=args.noise_seed,
                                         coarse_of_class=splits.coarse_of_class)
    labels = tensor_fingerprint(torch.from_numpy(noisy))  # recorded in last.pt: a resume trains on the same
    if state is not None and state['labels'] != labels:
        raise SetupError(f'--resume {run_dir}: the noisy labels differ from those the run was trained on; resume '
                         f'with the same noise, or start a new run')
    if state is not None:  # its history.json and summary.json are written there: nobody else's files
        check_no_foreign_files(run_dir, f'--resume {run_dir}')
    # one run per folder at a time, and only in a folder no other run finished in
    claim = RunClaim(run_dir, fresh=state is None, other='--out_dir')
    try:
        return train(args, splits, noisy, clean, source, device, run_dir, state, labels)
    except ResumeRefused as exc:  # the saved state's weights do not fit the classifier they name
        raise ResumeRefused(f'--resume {run_dir}: {exc}; it is damaged or was edited: start a new run') from None
    finally:
        claim.release()


def train(args, splits, noisy, clean, source, device, run_dir, state, labels):
    """Fit the classifier on the noisy labels (from `state` where resumed), last.pt (with `labels`, their
    fingerprint) after every epoch; history.json and summary.json into run_dir."""
    started = time.time()
    config = {k: v for k, v in vars(args).items() if k not in PER_COMMAND}

    def save(epoch_state):
        save_torch({**epoch_state, 'config': config, 'labels': labels}, os.path.join(run_dir, 'last.pt'))
    model, history = fit_classifier(splits.train_images, torch.from_numpy(noisy), splits.n_class, splits.mean,
                                    splits.std, arch=args.arch, epochs=args.nepoch, batch_size=args.batch_size,
                                    lr=args.lr, device=device, seed=args.seed,
                                    val=(splits.val_images, splits.val_labels), state=state, save=save)
    best = max(history, key=lambda r: r['val_acc'])
    summary = {'method': 'Standard (cross-entropy on noisy labels)', 'arch': args.arch, 'noise_type': args.noise_type,
               'noise_source': source, 'noisy_label_accuracy': 1 - noise_rate(noisy, clean),
               'best_val_acc': best['val_acc'], 'best_epoch': best['epoch'],
               'test_acc': accuracy(model, splits.test_images, splits.test_labels, splits.mean, splits.std),
               'epochs': args.nepoch, 'wall_time_s': round(time.time() - started, 2),
               'device': device_description(device), 'config': vars(args)}
    save_json(history, os.path.join(run_dir, 'history.json'))
    save_json(summary, os.path.join(run_dir, FINISHED))
    print('summary: ' + json.dumps({k: v for k, v in summary.items() if k != 'config'}))
    return summary


if __name__ == '__main__':
    torch.backends.cudnn.benchmark = True
    run_cli(main)
