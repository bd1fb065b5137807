"""Pre-train a SimCLR encoder on a dataset's own training images, in the format train_CIFAR.py loads.

    python pretrain_SimCLR.py --dataset cifar10 --arch resnet50 --nepoch 100
    python pretrain_SimCLR.py --resume runs/simclr/cifar10_resnet50      # continue a stopped run

Two augmented views per image, NT-Xent loss, projection head 2048→512→128. The images stay on the
device as uint8; both views of a batch are augmented there at once (utils/pretraining/augment.py: torchvision's
SimCLR CIFAR pipeline, batched); on CUDA the network runs in bf16 autocast and channels-last, and the
whole step (views, forward, backward, SGD update) is captured once as a CUDA graph and replayed
(--no-cuda_graph: eager); on the CPU it runs eagerly. The whole state is saved every --save_every
epochs and --resume continues exactly where it stopped, so long pre-training can run as a chain of
short commands (--stop_after); a first SIGTERM or SIGINT lets the epoch in progress finish, writes
state.pt and stops with the --resume line (a second stops at once). The encoder is exported only once
the run has trained all its epochs: a command stopped short writes nothing at --output, and its last
line says how to go on. A weighted kNN monitor (k=200, frozen features, test split) is printed and
logged every --knn_every epochs.

Every flag is checked before any work, and a --resume refuses flags that would change the run. The
encoder is never written over a file that is not this run's own earlier export: checked before any
work, and again when exporting, under a lock that one export of a path holds at a time.

Writes model/SimCLR_128_<dataset>_<arch>_s<seed>.pt (backbone under f.*, projection head under g.*;
pass it as --fp_checkpoint) and a .json sidecar with the architecture, epochs, kNN accuracy, the
seconds of each epoch (the first of each command apart: it carries the warm-up), the kNN accuracy
against wall time, the command and the encoder file's sha1 (written first: an export stopped between the
two files is this run's to write again, and is not taken for a whole one). The name differs from the authors' published
SimCLR_128_<dataset>, which train_CIFAR.py fetches by default.
"""
import utils.runs.startup  # noqa: F401  first, before torch loads: a Ctrl-C meanwhile ends in one line

import argparse
import json
import os
import sys

import torch

from utils.data.cifar import load_named
from utils.errors import SetupError
from utils.pretraining.checks import check_images, flag_problems, resumed
from utils.pretraining.epochs import epoch_seconds, train_epochs
from utils.pretraining.export import check_output, export, output_path, stopped_line
from utils.pretraining.trainer import Pretrainer
from utils.runs.cli import Parser, run_cli
from utils.runs.config import HelpFormatter, given_flags
from utils.runs.folders import RunClaim
from utils.runtime.devices import resolve_device
from utils.storage.saving import write_jsonl


def parser():
    p = Parser(description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group('data')
    g.add_argument('--dataset', default='cifar10', choices=('cifar10', 'cifar100', 'digits'),
                   help='images to pre-train on (all training images, labels unused)')
    g.add_argument('--n_images', type=int, default=None, help='use only the first N training images (tests)')
    g.add_argument('--image_size', type=int, default=None, help='resize images to this size (tests)')
    g.add_argument('--data_root', default='./data', help='folder holding (or receiving) the dataset')
    g.add_argument('--download', default=True, action=argparse.BooleanOptionalAction,
                   help='download the dataset when it is not under --data_root')
    g = p.add_argument_group('model and training')
    g.add_argument('--arch', default='resnet50', choices=('resnet50', 'resnet18'),
                   help='CIFAR-stem backbone (the released encoders: resnet50)')
    g.add_argument('--nepoch', type=int, default=100, help='total epochs of the run (a resumed run may raise it)')
    g.add_argument('--batch_size', type=int, default=512, help='images per step (two views each)')
    g.add_argument('--lr', type=float, default=None, help='peak SGD learning rate (default 0.06 × batch/256)')
    g.add_argument('--weight_decay', type=float, default=5e-4, help='SGD weight decay')
    g.add_argument('--temperature', type=float, default=0.5, help='NT-Xent temperature')
    g.add_argument('--warmup_epochs', type=int, default=10, help='linear LR warm-up before the cosine decay')
    g.add_argument('--seed', type=int, default=0, help='seed of the weights and augmentations')
    g = p.add_argument_group('computation')
    g.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    g.add_argument('--cuda_graph', default=True, action=argparse.BooleanOptionalAction,
                   help='on CUDA, capture the training step once as a CUDA graph and replay it (every step holds '
                        '--batch_size images); eager otherwise and on the CPU')
    g = p.add_argument_group('outputs and runs')
    g.add_argument('--knn_every', type=int, default=5, help='epochs between kNN monitor evaluations')
    g.add_argument('--save_every', type=int, default=1, help='epochs between saves of the whole state')
    g.add_argument('--stop_after', type=float, default=None, metavar='MINUTES',
                   help='save and stop cleanly once this command has trained this many minutes (chain commands '
                        'with --resume); the encoder is exported once the run has all its epochs')
    g.add_argument('--out_dir', default='./runs/simclr', help='parent folder of the pre-training run folders')
    g.add_argument('--output', default=None, help='encoder file (default model/SimCLR_128_<dataset>_<arch>_s<seed>.pt)')
    g.add_argument('--resume', default=None, metavar='RUN_DIR', help='continue the pre-training run in RUN_DIR')
    g.add_argument('--debug', action='store_true', help='show the traceback of a refusal')

    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    given = set(given_flags(parser(), argv))
    problems = flag_problems(args)
    if problems:
        raise SetupError('; '.join(problems))
    state = None
    if args.resume:
        args, state = resumed(args, given, parser())
    args.command_line = 'python pretrain_SimCLR.py ' + ' '.join(argv)
    device = resolve_device(args.device)
    run_dir = args.resume or os.path.join(args.out_dir, f'{args.dataset}_{args.arch}')
    check_output(output_path(args), run_dir, resuming=state is not None)
    # one pre-training per folder at a time: a second one (or a second --resume) is refused, not
    # interleaved; claimed before the data is read, so that a taken folder is refused at once
    claim = RunClaim(run_dir, fresh=not args.resume, checkpoint='state.pt', other='--out_dir')
    try:
        splits = load_named(args.dataset, args.data_root, args.download)
        check_images(args, splits)
        torch.backends.cudnn.benchmark = True
        return pretrain(args, splits, device, run_dir, state)
    finally:
        claim.release()


def pretrain(args, splits, device, run_dir, state):
    """The epochs (from `state` where resumed), the log, state.pt and, once the run has all its epochs,
    the exported encoder. A command stopped short by --stop_after exports nothing (a partial encoder at
    --output would pass for the whole run with train_CIFAR.py) and ends with the line saying how to go on."""
    trainer = Pretrainer(args, splits, device)
    if state is not None:
        trainer.restore(state)
        # epochs logged after the saved state are redone: keep the log consistent with it
        write_jsonl(trainer.history, os.path.join(run_dir, 'log.jsonl'))
    knn_acc = train_epochs(trainer, args, run_dir)
    summary = {'epochs': trainer.epoch, 'knn_top1_test': knn_acc, 'minutes': round(trainer.elapsed / 60, 2),
               **epoch_seconds(trainer.history)}
    if trainer.epoch < args.nepoch:
        print(stopped_line(trainer.epoch, args, run_dir))
        return {**summary, 'encoder': None}
    if knn_acc is None:
        summary['knn_top1_test'] = knn_acc = trainer.knn_accuracy()
    summary['encoder'] = export(trainer, args, run_dir, knn_acc, resuming=state is not None)
    print('summary: ' + json.dumps(summary))
    return summary


if __name__ == '__main__':
    run_cli(main)
