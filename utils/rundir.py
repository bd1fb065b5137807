"""Run folders: planned, claimed by one run at a time, and resumed only with what made them.

A run folder is created exclusively and locked (fcntl.flock on RUN_DIR/.lock) for the run's life,
before the minutes of feature extraction: a second run with the same --run_name, or a second
--resume of one run, is refused instead of interleaving one log.jsonl. A claimed folder still empty
when the run ends (a refusal before any output) is removed again.
"""
import errno
import fcntl
import hashlib
import os
import time

from utils.cache import paths_fingerprint, tensor_fingerprint
from utils.io import load_torch, remove_files, sweep_partial_writes
from utils.runtime import SetupError, default_run_name

# 3: the `_l` diffusion encoders end in the authors' two-layer head (2: one linear layer), and
# WebVision and Food-101N images are resized bicubic (2: bilinear); 2: the
# diffusion encoder's weights are under `diff_encoder.` (1: `x_encoder.`)
CHECKPOINT_FORMAT = 3
BICUBIC_SINCE_FORMAT_3 = ('webvision', 'food101n')  # their images were resized bilinear before
LOCK_NAME = '.lock'
# flags a resumed run may take from its own command line: where it runs and how it batches evaluation
# and extraction or launches its kernels (results do not depend on them), --nepoch to extend the run, and
# where inputs lie (the inputs themselves are checked by hash)
MAY_CHANGE_ON_RESUME = ('device', 'nepoch', 'num_workers', 'eval_batch_size', 'encode_batch_size', 'data_root',
                        'cache_dir', 'cifar_n_dir', 'clip_download_root', 'debug', 'cuda_graph')
# what a run recorded before a flag existed did, where that differs from the flag's default today: a
# run made before --ema_decay evaluated its trained weights (and a resume goes on doing so)
MEANT_WHEN_ABSENT = {'ema_decay': 0.0}
ALWAYS_FROM_THIS_RUN = ('device', 'resume', 'debug', 'command_line_flags', 'script_flags')


class ResumeRefused(SetupError):
    """A checkpoint this invocation cannot continue: not there, of another format, or its flags or
    inputs differ from this command's."""


def plan_run_dir(cfg):
    """The run folder: the one being resumed, or a new one that must not hold a run already.
    Created only once the inputs have been checked, so bad input leaves nothing behind."""
    if cfg.resume:
        return cfg.resume
    run_dir = os.path.join(cfg.out_dir, cfg.run_name or default_run_name(cfg))
    if os.path.exists(os.path.join(run_dir, 'last.pt')):
        raise SetupError(f'{run_dir} already holds a run; continue it with --resume {run_dir} or choose '
                         f'another --run_name')
    return run_dir


def load_run(run_dir, name='last.pt'):
    """A checkpoint of a run folder, checked for its format."""
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        raise ResumeRefused(f'{run_dir}: no {name} there (no finished epoch yet); start a new run')
    ckpt = _upgraded(load_torch(path), path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get('config'), dict):
        for name, value in MEANT_WHEN_ABSENT.items():
            ckpt['config'].setdefault(name, value)
    if not isinstance(ckpt, dict) or ckpt.get('format_version') != CHECKPOINT_FORMAT:
        found = ckpt.get('format_version') if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ResumeRefused(f'{path} is not an LRA-diffusion checkpoint of format {CHECKPOINT_FORMAT} '
                            f'(found {found})')
    return ckpt


def _upgraded(ckpt, path):
    """An older checkpoint read as today's format, where its weights mean the same network."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('model'), dict):
        return ckpt
    config = ckpt['config'] if isinstance(ckpt.get('config'), dict) else {}
    if ckpt.get('format_version') == 1:  # only the diffusion encoder's key prefix changed
        old = 'x_encoder.'
        ckpt['model'] = {('diff_encoder.' + k[len(old):] if k.startswith(old) else k): v
                         for k, v in ckpt['model'].items()}
        ckpt['format_version'] = 2
        config.setdefault('diff_backbone', 'cached')  # made before --diff_backbone: _l backbones were cached
    if ckpt.get('format_version') == 2:
        if str(config.get('diff_encoder', '')).endswith('_l'):
            raise ResumeRefused(f'{path} was made with a one-layer head on its {config["diff_encoder"]} diffusion '
                                f'encoder; this version builds the authors\' two-layer head and cannot resume it or '
                                f'predict with it: start a new run (or use the version that made it)')
        if config.get('dataset') in BICUBIC_SINCE_FORMAT_3:
            raise ResumeRefused(f'{path} was made from {config["dataset"]} images resized bilinear; this version '
                                f'resizes them bicubic, as the authors, and cannot resume it or predict with it: '
                                f'start a new run (or use the version that made it)')
        ckpt['format_version'] = 3
    return ckpt


def _may_change(name, saved):
    if name == 'eval_batch_size' and saved.get('eval_bn') == 'batch':
        return False  # with batch statistics at evaluation, the batch decides the predictions
    return name in MAY_CHANGE_ON_RESUME or name.endswith('_root')


def resumed_config(cfg, ckpt):
    """The saved configuration of the run being resumed. This invocation decides the device, and the
    flags that may change where its command line gives them; a flag the package gained after the run
    was made takes this invocation's value (its default, unless given)."""
    current = vars(cfg)
    given = set(current.get('command_line_flags') or ())
    merged = {**current, **ckpt['config']}
    for name in current:
        if name in ALWAYS_FROM_THIS_RUN or (name in given and _may_change(name, ckpt['config'])):
            merged[name] = current[name]
    return type(cfg)(**merged)


def check_resume_flags(cfg, ckpt, run_dir):
    """Refuse flags on a --resume command line that would change the run (a list of them), and a
    --nepoch below the epochs already trained."""
    saved = ckpt['config']
    given = set(vars(cfg).get('command_line_flags') or ()) - set(ALWAYS_FROM_THIS_RUN)
    changed = [f'--{name} {getattr(cfg, name)!r} (the run has {saved.get(name, "no such flag")!r})'
               for name in sorted(given) if not _may_change(name, saved) and saved.get(name, object()) != getattr(cfg, name)]
    if changed:
        raise ResumeRefused(f'--resume {run_dir} cannot change {", ".join(changed)}: drop those flags to continue '
                            f'the run, or start a new run with another --run_name')
    if 'nepoch' in given and cfg.nepoch < ckpt['epoch'] + 1:
        raise ResumeRefused(f'--nepoch {cfg.nepoch}: {run_dir} has already trained {ckpt["epoch"] + 1} epochs; '
                            f'give at least that many')


def input_fingerprints(splits, data):
    """What a resumed run must see again: its training labels, its f_p features' source and its dataset."""
    digest = hashlib.sha1(splits.name.encode())
    for split in ('train', 'val', 'test'):
        content = splits.source(split)
        digest.update((tensor_fingerprint(content) if splits.in_memory else paths_fingerprint(content)).encode())
        labels = splits.labels(split) if split != 'train' else None
        if labels is not None:
            digest.update(tensor_fingerprint(labels).encode())
    info = data.info
    return {'training labels': tensor_fingerprint(data.noisy_labels),
            'f_p features': f"{info['fp_weights']}/{tensor_fingerprint(data.features['train'])}",
            'dataset': digest.hexdigest()[:16]}


def check_resume_inputs(saved, now, run_dir):
    """Refuse a resume whose inputs differ from the run's, naming what changed."""
    if not saved:  # a checkpoint written before inputs were recorded
        return
    changed = [name for name in now if saved.get(name) != now[name]]
    if changed:
        raise ResumeRefused(f'--resume {run_dir}: the {" and the ".join(changed)} differ from those the run was made '
                            f'with; resume with the same inputs, or start a new run')


def check_writable(folder, flag):
    """Refuse a folder that cannot be written (checked at the nearest existing folder: nothing is created)."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.access(path, os.W_OK):
        raise SetupError(f'{flag} {folder} is not writable ({path} is read-only or not yours); choose another {flag}')


def _makedirs(folder):
    """os.makedirs that returns the folders it created, deepest first."""
    made, path = [], os.path.abspath(folder)
    while not os.path.exists(path):
        made.append(path)
        path = os.path.dirname(path)
    for path in reversed(made):
        try:
            os.mkdir(path)
        except FileExistsError:
            made.remove(path)
    return made


class RunClaim:
    """The run folder, created exclusively (a fresh run) and locked for the run's life. `checkpoint`
    is the file that says a run is there; `other` names the flag that picks another folder."""

    def __init__(self, run_dir, fresh, flag='--out_dir', checkpoint='last.pt', other='--run_name'):
        self.run_dir, self.made, self.fd = run_dir, [], None
        self.checkpoint, self.other = checkpoint, other
        check_writable(run_dir, '--resume' if not fresh else flag)
        try:
            self.made = _makedirs(run_dir)
            self.fd = os.open(os.path.join(run_dir, LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            self.release()
            raise SetupError(f'cannot create the run folder {run_dir} ({exc.strerror}); choose another {flag}') \
                from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            os.close(self.fd)
            self.fd = None
            raise SetupError(f'{run_dir} is in use by another run right now; wait for it to finish, or choose '
                             f'another {other}') from None
        if fresh:
            self._start_fresh()
        sweep_partial_writes(run_dir)

    def _start_fresh(self):
        if os.path.exists(os.path.join(self.run_dir, self.checkpoint)):  # finished while we waited to claim it
            self.release()
            raise SetupError(f'{self.run_dir} already holds a run; continue it with --resume {self.run_dir} or '
                             f'choose another {self.other}')
        # what a run that died before its first checkpoint left: a fresh run never appends to its log
        remove_files(self.run_dir, ('log.jsonl', 'best.pt', 'summary.json'))

    def release(self):
        """Unlock; remove the folder again if nothing but the lock was written to it."""
        if self.made and os.listdir(self.run_dir) in ([], [LOCK_NAME]):
            lock = os.path.join(self.run_dir, LOCK_NAME)
            if os.path.exists(lock):
                os.remove(lock)
            for path in self.made:
                if not os.listdir(path):
                    os.rmdir(path)
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


STALE_SECONDS = 3600


def sweep_stale_cache_writes(cache_dir):
    """Temporary files in a shared cache older than an hour: writes whose process died (a younger one
    may be another run's write in progress)."""
    return sweep_partial_writes(cache_dir, older_than=time.time() - STALE_SECONDS)
