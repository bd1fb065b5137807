"""The exported encoder (the authors' released format, backbone under f.*, head under g.*) and its
.json sidecar: where they go, whose a path already is, the lock one export of a path holds, and the
line a run stopped short ends with (it exports nothing)."""
import contextlib
import fcntl
import hashlib
import io
import os

import torch

from utils.encoders.base import MODEL_DIR
from utils.encoders.simclr import SimCLREncoder
from utils.errors import SetupError
from utils.pretraining.epochs import epoch_seconds, knn_curve
from utils.runs.folders import check_writable, same_file
from utils.runtime.devices import device_description
from utils.storage.fingerprints import file_digest
from utils.storage.loading import load_json
from utils.storage.saving import atomic_write, save_json


def output_path(args):
    return args.output or os.path.join(MODEL_DIR, f'SimCLR_128_{args.dataset}_{args.arch}_s{args.seed}.pt')


def sidecar_path(path):
    return os.path.splitext(path)[0] + '.json'


def check_output(path, run_dir, resuming):
    """Refuse an encoder path that cannot be written, or whose file or sidecar is there and is not this
    run's own earlier export: a resume of the run in `run_dir` may export again over its own."""
    check_output_place(path)
    there = [p for p in (path, sidecar_path(path)) if os.path.lexists(p)]
    if there and not (resuming and is_own_export(path, run_dir)):
        made_by = exported_by(path)
        whose = f'the export of the run in {made_by}' if made_by else 'not an export of this run'
        raise SetupError(f'{there[0]} already exists ({whose}); give --output another path, or delete it')


def check_output_place(path):
    """A file name (the sidecar beside it takes the .json name) in a folder this user may write."""
    if os.path.isdir(path):
        raise SetupError(f'--output {path} is a folder; give --output a file path ending in .pt')
    if sidecar_path(path) == path:
        raise SetupError(f'--output {path}: the encoder\'s .json sidecar would be written over it; give --output '
                         f'a file path ending in .pt')
    check_writable(os.path.dirname(os.path.abspath(path)), '--output')  # a file in the way is refused there


def exported_by(path):
    """The run folder the sidecar of the export at `path` names (None: no sidecar of pretrain_SimCLR.py's)."""
    made_by = load_json(sidecar_path(path)).get('run_dir')
    return made_by if isinstance(made_by, str) else None


def is_own_export(path, run_dir):
    made_by = exported_by(path)
    return made_by is not None and os.path.realpath(made_by) == os.path.realpath(run_dir)


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
        blob = io.BytesIO()
        torch.save({k: v.cpu() for k, v in encoder.state_dict().items()}, blob)
        # the sidecar first, naming this run and the digest of the encoder to come: stopped between the two
        # writes, the path stays this run's to export again (--resume), and an encoder file that is not the
        # one the sidecar describes (an earlier export, or none) is not taken for it (export_complete)
        described = sidecar(trainer, args, run_dir, knn_acc, encoder.dim)
        save_json({**described, 'sha1': hashlib.sha1(blob.getvalue()).hexdigest()}, sidecar_path(path))
        atomic_write(path, lambda f: f.write(blob.getvalue()), flag='--output')
    return path


def export_complete(path):
    """Whether the encoder at `path` is the one its sidecar describes (exports before the sidecar held its
    digest wrote the encoder first: complete where both are there)."""
    if not os.path.isfile(path):
        return False
    recorded = load_json(sidecar_path(path)).get('sha1')
    return recorded is None or recorded == file_digest(path)


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


def stopped_line(epochs, args, run_dir):
    """How to go on, and that the encoder comes at the end (an earlier export of this run at --output, from
    a version that exported stopped runs or before --nepoch was raised, is named: it is not this run's)."""
    path = output_path(args)
    line = (f'stopped after {epochs} of {args.nepoch} epochs; continue with --resume {run_dir}: the encoder is '
            f'exported to {path} once all {args.nepoch} are trained')
    if os.path.exists(path) and is_own_export(path, run_dir):  # left as it is, named so as not to pass for it
        epochs = load_json(sidecar_path(path)).get('epochs')
        line += (f' ({path} holds an earlier export of this run, of {epochs} epochs)' if export_complete(path) else
                 f' ({path} holds an export of this run that was stopped before it was written whole)')
    return line
