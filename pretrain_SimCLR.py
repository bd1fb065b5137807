"""Pre-train a SimCLR encoder on a dataset's own training images, in the format train_CIFAR.py loads.

    python pretrain_SimCLR.py --dataset cifar10 --arch resnet50 --nepoch 100
    python pretrain_SimCLR.py --resume runs/simclr/cifar10_resnet50      # continue a stopped run

Two augmented views per image, NT-Xent loss, projection head 2048→512→128. The images stay on the
device as uint8; both views of a batch are augmented there at once (utils/encoders/simclr_training.py: torchvision's
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
against wall time and the command. The name differs from the authors' published
SimCLR_128_<dataset>, which train_CIFAR.py fetches by default.
"""
import argparse
import contextlib
import fcntl
import json
import math
import os
import sys
import time

import torch

from utils.data.cifar import load_named
from utils.data.images import channels_last
from utils.encoders.base import MODEL_DIR, encode_all
from utils.encoders.simclr import SimCLREncoder
from utils.encoders.simclr_training import knn_monitor, nt_xent, simclr_views
from utils.errors import Interrupted, ResumeRefused, SetupError
from utils.runs.checks import config_problems
from utils.runs.cli import Parser, run_cli
from utils.runs.config import HelpFormatter, given_flags
from utils.runs.folders import RunClaim, check_writable, same_file
from utils.runtime.devices import device_description, load_optimizer_state, resolve_device
from utils.runtime.graphs import CAPTURE_ERRORS
from utils.runtime.progress import print_line, progress_bar
from utils.runtime.randomness import rng_state, seed_everything, set_rng_state
from utils.runtime.signals import StopSignals
from utils.storage.loading import load_json, load_torch
from utils.storage.saving import append_jsonl, save_json, save_torch, write_jsonl

STATE_FORMAT = 1
# this script's flags that must be at least 1, beyond those utils/runs/checks knows
AT_LEAST_ONE = ('n_images', 'knn_every', 'save_every')
# flags a --resume may give: where and how it runs, how often it saves and monitors, where its data
# lies and where the encoder goes (none of them changes a weight), and --nepoch to lengthen the run
PER_COMMAND = ('resume', 'device', 'stop_after', 'cuda_graph', 'debug', 'save_every', 'knn_every', 'data_root',
               'download', 'nepoch', 'output')
# those a resume takes from its own command even where not given (its defaults)
ALWAYS_FROM_THIS_COMMAND = ('resume', 'device', 'stop_after', 'cuda_graph', 'debug')


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


def sgd_lr(step, total, warmup, peak):
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def resize(images, size):
    if size is None or images.shape[-1] == size:
        return images
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode='bilinear', antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


class Pretrainer:
    def __init__(self, args, splits, device):
        self.args, self.device = args, device
        self.mean, self.std = splits.mean, splits.std
        # unlabelled pre-training on every training image (the validation images too: no labels used)
        n = args.n_images
        self.images = resize(torch.cat([splits.train_images, splits.val_images])[:n], args.image_size).to(device)
        self.monitor = (torch.cat([splits.train_clean, splits.val_labels])[:n].to(device),
                        resize(splits.test_images, args.image_size), splits.test_labels.to(device), splits.n_class)
        seed_everything(args.seed)
        self.model = channels_last(SimCLREncoder(args.arch, mean=splits.mean, std=splits.std).to(device), device)
        self.lr = args.lr or 0.06 * args.batch_size / 256
        cuda = device.type == 'cuda'
        # on CUDA one fused kernel updates every weight, its learning rate read from a device tensor (set
        # before each step, read inside the graph); on the CPU the update stays torch's default
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9, weight_decay=args.weight_decay,
                                   fused=True if cuda else None)
        self.lr_now = torch.tensor(self.lr, device=device) if cuda else None
        self._use_lr_tensor()
        self.graph = GraphedStep(self) if cuda and args.cuda_graph else None
        self.steps_per_epoch = len(self.images) // args.batch_size
        self.epoch, self.history, self.elapsed = 0, [], 0.0

    def _use_lr_tensor(self):
        if self.lr_now is not None:
            for group in self.opt.param_groups:
                group['lr'] = self.lr_now

    def set_lr(self, step):
        value = sgd_lr(step, self.args.nepoch * self.steps_per_epoch, self.args.warmup_epochs * self.steps_per_epoch,
                       self.lr)
        if self.lr_now is not None:
            self.lr_now.fill_(value)
        else:
            for group in self.opt.param_groups:
                group['lr'] = value

    def update(self, idx):
        """One SGD step on the images `idx` (a device tensor): both views, NT-Xent, backward, update.
        The loss stays on the device. What a CUDA graph captures: no host sync, static shapes."""
        views = channels_last(simclr_views(self.images[idx], self.mean, self.std))
        cuda = self.device.type == 'cuda'
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cuda, cache_enabled=False):
            z = self.model.g(torch.flatten(self.model.f(views), 1))
        loss = nt_xent(*z.float().chunk(2), temperature=self.args.temperature)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def step(self, idx, step):
        self.set_lr(step)
        return self.graph.run(idx) if self.graph is not None else self.update(idx)

    def train_epoch(self):
        """(mean loss, seconds) of one epoch; the loss is read once, at its end."""
        started = time.perf_counter()
        self.model.train()
        order = torch.randperm(len(self.images), device=self.device)
        total = torch.zeros((), device=self.device)
        for i in range(self.steps_per_epoch):
            idx = order[i * self.args.batch_size:(i + 1) * self.args.batch_size]
            total += self.step(idx, self.epoch * self.steps_per_epoch + i)
        loss = float(total) / self.steps_per_epoch
        if not math.isfinite(loss):
            raise FloatingPointError(f'SimCLR loss became non-finite in epoch {self.epoch}; lower --lr')
        return loss, time.perf_counter() - started

    def knn_accuracy(self):
        self.model.eval()
        labels, test_images, test_labels, n_class = self.monitor
        train_features = encode_all(self.model, self.images, batch_size=1024, progress=False)
        test_features = encode_all(self.model, test_images, batch_size=1024, progress=False)
        return knn_monitor(train_features, labels, test_features, test_labels, n_class)

    def state(self):
        optimizer = self.opt.state_dict()
        for group in optimizer['param_groups']:  # saved as a number, whatever holds it while training
            group['lr'] = float(group['lr'])
        return {'format_version': STATE_FORMAT, 'args': vars(self.args), 'epoch': self.epoch,
                'model': self.model.state_dict(), 'optimizer': optimizer, 'history': self.history,
                'rng': rng_state(self.device), 'elapsed_s': self.elapsed}

    def restore(self, state):
        self.model.load_state_dict(state['model'])
        load_optimizer_state(self.opt, state['optimizer'])  # fused, with the lr tensor, where this device runs so
        self.epoch, self.history, self.elapsed = state['epoch'], state['history'], state['elapsed_s']
        set_rng_state(state['rng'], self.device)


class GraphedStep:
    """Pretrainer.update captured once as a CUDA graph and replayed for every later step: the same
    kernels each step (every batch holds batch_size images), none of the Python and launch cost per
    kernel. The first WARMUP steps run eagerly on a side stream (cuDNN autotuning, the optimiser's
    momentum buffers); they are real steps of the run, like every replay."""
    WARMUP = 3

    def __init__(self, trainer):
        self.trainer, self.eager_steps, self.graph = trainer, 0, None
        self.idx = torch.zeros(trainer.args.batch_size, dtype=torch.long, device=trainer.device)
        self.loss = None

    def run(self, idx):
        self.idx.copy_(idx)
        if self.graph is None and self.eager_steps < self.WARMUP:
            self.eager_steps += 1
            side = torch.cuda.Stream(self.trainer.device)
            side.wait_stream(torch.cuda.current_stream(self.trainer.device))
            with torch.cuda.stream(side):
                loss = self.trainer.update(self.idx)
            torch.cuda.current_stream(self.trainer.device).wait_stream(side)
            return loss
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            self.trainer.opt.zero_grad(set_to_none=True)  # the captured backward then writes the gradients afresh
            with torch.cuda.graph(self.graph, capture_error_mode=CAPTURE_ERRORS):
                self.loss = self.trainer.update(self.idx)
        self.graph.replay()  # capturing ran nothing: the first replay is this step
        return self.loss.clone()


def epoch_seconds(history):
    """Training seconds per epoch from the log: the first epoch of each command apart (it carries the
    warm-up: cuDNN autotuning, the graph capture), the mean of the others, and epochs per second."""
    first = [r['epoch_s'] for r in history if 'epoch_s' in r and r.get('warmup')]
    warm = [r['epoch_s'] for r in history if 'epoch_s' in r and not r.get('warmup')]
    mean = sum(warm) / len(warm) if warm else None
    return {'first_epoch_s': first[0] if first else None, 'warm_epoch_s': round(mean, 3) if mean else None,
            'warm_epochs': len(warm), 'epochs_per_s': round(1 / mean, 4) if mean else None}


def knn_curve(history):
    """[epoch, wall minutes, kNN top-1] at every kNN evaluation of the log."""
    return [[r['epoch'], r['minutes'], r['knn_acc']] for r in history if 'knn_acc' in r]


def output_path(args):
    return args.output or os.path.join(MODEL_DIR, f'SimCLR_128_{args.dataset}_{args.arch}_s{args.seed}.pt')


def sidecar_path(path):
    return os.path.splitext(path)[0] + '.json'


def export(trainer, args, run_dir, knn_acc, resuming):
    """The encoder in the released format, plus its sidecar, once the run has all its epochs. Whose the
    path is is checked again here, with the writes, under export_lock: the check before any work may be
    hours old, and another run may have exported there since (or be exporting there now)."""
    path = output_path(args)
    encoder = SimCLREncoder(args.arch)
    encoder.load_state_dict(trainer.model.state_dict())
    check_output_place(path)  # before the lock file goes beside it
    with export_lock(path):
        try:
            check_output(path, run_dir, resuming)
        except SetupError as exc:  # the epochs are not lost: state.pt holds them
            raise SetupError(f'{exc}, then export this run with --resume {run_dir} (its state.pt holds every '
                             f'epoch trained)') from None
        save_torch({k: v.cpu() for k, v in encoder.state_dict().items()}, path)
        save_json(sidecar(trainer, args, run_dir, knn_acc, encoder.dim), sidecar_path(path))
    return path


def sidecar(trainer, args, run_dir, knn_acc, dim):
    return {'architecture': f'SimCLR {args.arch}, CIFAR stem (3×3 stride-1 conv1, no max-pool), '
                            f'head {dim}→512→128',
            'dataset': args.dataset, 'epochs': trainer.epoch, 'knn_top1_test': knn_acc,
            'knn': 'weighted kNN, k=200, τ=0.1, cosine, frozen features', 'batch_size': args.batch_size,
            'temperature': args.temperature, 'pretrain_minutes': round(trainer.elapsed / 60, 2),
            'device': device_description(trainer.device), 'cuda_graph': trainer.graph is not None,
            **epoch_seconds(trainer.history), 'knn_curve': knn_curve(trainer.history),
            'run_dir': os.path.abspath(run_dir), 'command': args.command_line}


def export_lock_path(path):
    """Named after the sidecar, which --output x.pt, x.pth and x all write (x.json): one lock for them all."""
    side = sidecar_path(os.path.abspath(path))
    return os.path.join(os.path.dirname(side), f'.{os.path.basename(side)}.export-lock')


@contextlib.contextmanager
def export_lock(path):
    """One export of `path` at a time, across processes and runs (a run's RunClaim locks only its own
    folder): an flock on a lock file beside it (a file, not the folder: NFS locks only files opened for
    writing), waited for. The export holding it removes the file before letting go (one a killed export
    left too: the name is this package's); one that opened it meanwhile then holds a removed file, and
    locks the one there now."""
    lock = export_lock_path(path)
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if same_file(fd, lock):
            break
        os.close(fd)
    try:
        yield
    finally:
        os.remove(lock)
        os.close(fd)


# ---- checks before any work ------------------------------------------------------------------------

def flag_problems(args):
    """Every bad flag value, worded as utils/runs/checks words the training scripts' (an unset flag,
    None, is not checked: --lr then comes from --batch_size)."""
    values = argparse.Namespace(**{k: v for k, v in vars(args).items() if v is not None})
    problems = config_problems(values)
    problems += [f'--{name} {getattr(values, name)} must be at least 1' for name in AT_LEAST_ONE
                 if getattr(values, name, 1) < 1]
    if not math.isfinite(args.temperature) or args.temperature <= 0:
        problems.append(f'--temperature {args.temperature} must be a finite number above 0')
    if not math.isfinite(args.weight_decay) or args.weight_decay < 0:
        problems.append(f'--weight_decay {args.weight_decay} must be a finite number, 0 or above')
    if args.stop_after is not None and not 0 <= args.stop_after < math.inf:
        problems.append(f'--stop_after {args.stop_after} must be a finite number of minutes, 0 or above')
    return problems + batch_problems(args.batch_size, args.n_images)


def batch_problems(batch_size, n_images):
    """An epoch is whole batches only: with fewer images than --batch_size it would hold no step."""
    if n_images is None or not 1 <= n_images < batch_size:
        return []
    return [f'--batch_size {batch_size} is more than the {n_images} images pre-trained on; lower --batch_size']


def check_images(args, splits):
    n = len(splits.train_images) + len(splits.val_images)
    problems = batch_problems(args.batch_size, min(n, args.n_images or n))
    if problems:
        raise SetupError(problems[0])


def shown(value):
    return 'default' if value is None else value


def load_state(run_dir):
    """The state.pt of a pre-training run, checked for its format; its flags as of today's names."""
    path = os.path.join(run_dir, 'state.pt')
    if not os.path.isfile(path):
        raise ResumeRefused(f'--resume {run_dir}: no state.pt there; start a new run')
    state = load_torch(path, 'SimCLR pre-training state')
    if not isinstance(state, dict) or state.get('format_version') != STATE_FORMAT \
            or not isinstance(state.get('args'), dict):
        raise ResumeRefused(f'{path} is not a SimCLR pre-training state of format {STATE_FORMAT}; start a new run')
    saved = dict(state['args'])
    saved.setdefault('nepoch', saved.pop('epochs', None))  # a state saved when the flag was --epochs
    return state, saved


def resumed(args, given):
    """The saved state and the run's flags, with what this command may decide (PER_COMMAND)."""
    state, saved = load_state(args.resume)
    check_resume_flags(args, given, saved)
    ours = {name: getattr(args, name) for name in PER_COMMAND if name in given or name in ALWAYS_FROM_THIS_COMMAND}
    return argparse.Namespace(**{**saved, **ours}), state


def check_resume_flags(args, given, saved):
    """Refuse, never drop, flags given with --resume that would change the run (all of them in one
    line), and a --nepoch that would shorten it."""
    defaults = parser()
    run = {name: saved.get(name, defaults.get_default(name)) for name in given}  # a flag newer than the run: default
    changed = [f'--{name} {shown(getattr(args, name))} (run: {shown(run[name])})' for name in sorted(given)
               if name not in PER_COMMAND and getattr(args, name) != run[name]]
    if changed:
        raise ResumeRefused(f"--resume {args.resume}: these flags differ from the run's: {', '.join(changed)}; "
                            f'drop them or start a new run')
    if 'nepoch' in given and args.nepoch < saved['nepoch']:
        raise ResumeRefused(f'--nepoch {args.nepoch}: the run in {args.resume} is of {saved["nepoch"]} epochs; a '
                            f'resume may lengthen it, not shorten it: give at least {saved["nepoch"]} or drop --nepoch')


def check_output(path, run_dir, resuming):
    """Refuse an encoder path that cannot be written, or whose file or sidecar is there and is not this
    run's own earlier export: a resume of the run in `run_dir` may export again over its own."""
    check_output_place(path)
    there = [p for p in (path, sidecar_path(path)) if os.path.lexists(p)]
    if there and not (resuming and is_own_export(path, run_dir)):
        made_by = exported_by(path)
        whose = f'the export of the run in {made_by}' if made_by else 'not an export of this run'
        raise SetupError(f'{there[0]} already exists ({whose}); give --output another path, or delete it')


def exported_by(path):
    """The run folder the sidecar of the export at `path` names (None: no sidecar of this script's)."""
    made_by = load_json(sidecar_path(path)).get('run_dir')
    return made_by if isinstance(made_by, str) else None


def is_own_export(path, run_dir):
    made_by = exported_by(path)
    return made_by is not None and os.path.realpath(made_by) == os.path.realpath(run_dir)


def check_output_place(path):
    """A file name (the sidecar beside it takes the .json name) in a folder this user may write."""
    if os.path.isdir(path):
        raise SetupError(f'--output {path} is a folder; give --output a file path ending in .pt')
    if sidecar_path(path) == path:
        raise SetupError(f'--output {path}: the encoder\'s .json sidecar would be written over it; give --output '
                         f'a file path ending in .pt')
    check_writable(os.path.dirname(os.path.abspath(path)), '--output')  # a file in the way is refused there


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    given = set(given_flags(parser(), argv))
    problems = flag_problems(args)
    if problems:
        raise SetupError('; '.join(problems))
    state = None
    if args.resume:
        args, state = resumed(args, given)
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


# ---- the run ---------------------------------------------------------------------------------------

class EpochStop(StopSignals):
    """StopSignals whose first signal lets the epoch in progress finish: state.pt holds whole epochs
    (a resume then goes on exactly, as from --stop_after)."""

    def _handle(self, signum, frame):
        if self.signum is not None:
            return super()._handle(signum, frame)  # a second signal stops at once
        self.signum = signum
        print(f'\n{self.name}: finishing this epoch, then writing state.pt (send it again to stop at once)',
              file=sys.stderr, flush=True)


def run_epoch(trainer, args, first):
    """One epoch and, where due, the kNN monitor: its log record."""
    loss, seconds = trainer.train_epoch()
    # the first epoch of each command carries its warm-up (cuDNN autotuning, the graph capture)
    record = {'epoch': trainer.epoch + 1, 'loss': loss, 'epoch_s': round(seconds, 3),
              **({'warmup': True} if trainer.epoch == first else {})}
    trainer.epoch += 1
    if trainer.epoch % args.knn_every == 0 or trainer.epoch == args.nepoch:
        knn_started = time.perf_counter()
        record['knn_acc'] = trainer.knn_accuracy()
        record['knn_s'] = round(time.perf_counter() - knn_started, 3)
    return record


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


def stopped_line(epochs, args, run_dir):
    """How to go on, and that the encoder comes at the end (an earlier export of this run at --output, from
    a version that exported stopped runs or before --nepoch was raised, is named: it is not this run's)."""
    path = output_path(args)
    line = (f'stopped after {epochs} of {args.nepoch} epochs; continue with --resume {run_dir}: the encoder is '
            f'exported to {path} once all {args.nepoch} are trained')
    if os.path.exists(path) and is_own_export(path, run_dir):  # left as it is, named so as not to pass for it
        epochs = load_json(sidecar_path(path)).get('epochs')
        line += f' ({path} holds an earlier export of this run, of {epochs} epochs)'
    return line


def train_epochs(trainer, args, run_dir):
    """Epochs until the run has all of them, --stop_after's minutes are up, or a signal (Interrupted);
    state.pt written every --save_every epochs and whenever the command stops. The last kNN accuracy."""
    started = time.time() - trainer.elapsed
    this_command = time.time()  # --stop_after counts this command's minutes, not the run's: a chain goes on
    knn_acc = trainer.history[-1]['knn_acc'] if trainer.history and 'knn_acc' in trainer.history[-1] else None
    first = trainer.epoch
    state_path = os.path.join(run_dir, 'state.pt')
    with EpochStop() as stop:
        for _ in progress_bar(range(trainer.epoch, args.nepoch), desc=f'SimCLR {args.arch}', initial=trainer.epoch,
                              total=args.nepoch):
            record = run_epoch(trainer, args, first)
            knn_acc = record.get('knn_acc', knn_acc)
            trainer.elapsed = time.time() - started
            record['minutes'] = round(trainer.elapsed / 60, 3)
            if 'knn_acc' in record:
                print_line(f'epoch {trainer.epoch}  loss {record["loss"]:.4f}  kNN top-1 {100 * knn_acc:.2f}%  '
                           f'{record["minutes"]:.1f} min')
            trainer.history.append(record)
            append_jsonl(record, os.path.join(run_dir, 'log.jsonl'))
            stopping = args.stop_after is not None and (time.time() - this_command) / 60 >= args.stop_after \
                and trainer.epoch < args.nepoch
            signalled = stop.signum is not None and trainer.epoch < args.nepoch
            if trainer.epoch % args.save_every == 0 or trainer.epoch == args.nepoch or stopping or signalled:
                save_torch(trainer.state(), state_path)
            if signalled:
                raise Interrupted(f'{stop.name} after epoch {trainer.epoch}; {state_path} holds it. Continue with '
                                  f'--resume {run_dir}', stop.signum)
            if stopping:
                break
    return knn_acc


if __name__ == '__main__':
    run_cli(main)
