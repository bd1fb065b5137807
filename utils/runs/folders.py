"""Run folders: planned, claimed by one run at a time, and resumed only with what made them.

A run folder is locked (fcntl.flock on RUN_DIR/.lock) for the run's life, before the minutes of
feature extraction: a second run with the same --run_name, or a second --resume of one run, is
refused instead of interleaving one log.jsonl. A run writes only in what it owns: the folder records
every file its runs wrote (RUN_DIR/.written.json, each name entered before the file is first
written), a fresh run refuses a folder holding anything else, and only the leftovers the record
names are ever cleared. A refused run leaves every folder as it found it.
"""
import errno
import fcntl
import hashlib
import itertools
import math
import os
import tempfile
import threading
import time

import torch

from utils.data.noise import names_a_file
from utils.errors import ResumeRefused, SetupError, first_few
from utils.recipes import cuda_graph_mode
from utils.runtime.randomness import is_rng_state
from utils.runs.checks import config_problems
from utils.runs.config import COMMON_DEFAULTS, DATA_FILE_FLAGS, Config, names_a_path, saved_flag_problems
from utils.storage.fingerprints import (file_digest, files_fingerprints, files_modified_after, paths_fingerprint,
                                        tensor_fingerprint, within_common_folder)
from utils.storage.loading import load_json, load_torch
from utils.storage.saving import (atomic_write, missing_folders, owned_folder, partial_write_of, remove_files,
                                  save_json, sweep_partial_writes)

# 3: the `_l` diffusion encoders end in the authors' two-layer head (2: one linear layer), and
# WebVision and Food-101N images are resized bicubic (2: bilinear); 2: the
# diffusion encoder's weights are under `diff_encoder.` (1: `x_encoder.`)
CHECKPOINT_FORMAT = 3
BICUBIC_SINCE_FORMAT_3 = ('webvision', 'food101n')  # their images were resized bilinear before
LOCK_NAME = '.lock'
RECORD_NAME, RECORD_FORMAT, WRITTEN_BY = '.written.json', 1, 'LRA-diffusion'
# what a run that died before its first checkpoint leaves that a fresh run must not go on from, and the
# file that says a run finished (a folder holding it is never taken by a fresh run)
LEFTOVERS, FINISHED = ('log.jsonl', 'best.pt'), 'summary.json'
# the kinds of run a folder can hold, by the checkpoint that says one is there: a fresh run takes no folder
# holding either, and none whose record says another kind of run wrote there
RUN_KINDS = {'last.pt': 'training', 'state.pt': 'SimCLR pre-training'}
# files only one kind of run writes (a record from before the kind was recorded is read by them)
KIND_MARKS = {'last.pt': ('last.pt', 'best.pt', 'config.json', 'summary.json'), 'state.pt': ('state.pt',)}
# flags a resumed run may take from its own command line: where it runs and how it batches evaluation
# and extraction or launches its kernels (results do not depend on them), --nepoch to extend the run, and
# where inputs lie (the inputs themselves are checked by hash)
MAY_CHANGE_ON_RESUME = ('device', 'nepoch', 'num_workers', 'eval_batch_size', 'encode_batch_size', 'data_root',
                        'cache_dir', 'cifar_n_dir', 'clip_download_root', 'debug', 'cuda_graph',
                        'frozen_kernels')
# what a run recorded before a flag existed did, where that differs from the flag's default today: a
# run made before --ema_decay evaluated its trained weights (and a resume goes on doing so); one made
# before --clip_tower ran the clip package's tower; one made before --drop_last trained every last batch
MEANT_WHEN_ABSENT = {'ema_decay': 0.0, 'clip_tower': 'clip', 'drop_last': False}
# flags runs recorded that are gone: --fp_features (now --fp_checkpoint) and --predict* (now predict.py)
FOLDED_FLAGS = ('fp_features', 'predict', 'predict_split', 'predict_folder')
ALWAYS_FROM_THIS_RUN = ('device', 'gpu_devices', 'resume', 'debug', 'argv', 'command_line_flags', 'script_flags',
                        'dataset_flags')


def plan_run_dir(cfg):
    """The run folder: the one being resumed, or a new one that a fresh run may write in (checked
    again when it is claimed, after the inputs). Nothing is created here."""
    if cfg.resume:
        return cfg.resume
    run_dir = os.path.join(cfg.out_dir, cfg.run_name or default_run_name(cfg))
    check_fresh_folder(run_dir)
    return run_dir


def load_run(run_dir, name='last.pt'):
    """A checkpoint of a run folder, checked for its format."""
    path = os.path.join(run_dir, name)
    if not os.path.isdir(run_dir):
        raise ResumeRefused(f'{run_dir} is {"a file" if os.path.exists(run_dir) else "absent"}, not a run folder; '
                            f'name the folder of a training run')
    for held, kind in RUN_KINDS.items():
        if held != 'last.pt' and os.path.exists(os.path.join(run_dir, held)):
            raise ResumeRefused(f'{run_dir} holds a {kind} run ({held}), not a training run; name the folder of '
                                f'a training run')
    if not os.path.isfile(path):
        if os.path.isdir(os.path.join(run_dir, 'k_trials')) and not os.path.isfile(os.path.join(run_dir, 'last.pt')):
            raise ResumeRefused(f'{run_dir} was stopped while choosing k, before its run began: run the command '
                                f'that started it again (the same flags and --run_name {os.path.basename(run_dir)}); '
                                f'it goes on with the trials done')
        if not any(os.path.exists(os.path.join(run_dir, mark)) for mark in (*KIND_MARKS['last.pt'], *LEFTOVERS)):
            raise ResumeRefused(f'{run_dir} holds no training run (no {name}, config.json or log.jsonl); name the '
                                f'folder of a training run (runs/<run_name>)')
        log = os.path.join(run_dir, 'log.jsonl')
        if name == 'best.pt' and os.path.isfile(log) and os.path.getsize(log):  # evaluated, its best.pt gone
            raise ResumeRefused(f'{run_dir}: best.pt is missing, though the run has evaluated epochs (log.jsonl); '
                                f'restore it from a copy of the run')
        if name == 'best.pt':  # predict.py: a run that has not evaluated an epoch yet
            raise ResumeRefused(f'{run_dir}: no best.pt there yet (no epoch evaluated); predict once the run has '
                                f'evaluated one (its first evaluation follows its warm-up)')
        raise ResumeRefused(f'{run_dir}: no {name} there (no finished epoch yet); start a new run')
    # deleting a run's checkpoint rebuilds nothing: it ends the run (a fresh run there clears its log too)
    ckpt = _upgraded(load_torch(path, fix='restore it from a copy if there is one; otherwise start a new run '
                                          'under another name (deleting it would end this run)'), path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get('config'), dict):
        for name, value in MEANT_WHEN_ABSENT.items():
            ckpt['config'].setdefault(name, value)
    if not isinstance(ckpt, dict) or ckpt.get('format_version') != CHECKPOINT_FORMAT:
        found = ckpt.get('format_version') if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ResumeRefused(f'{path} is not an LRA-diffusion checkpoint of format {CHECKPOINT_FORMAT} '
                            f'(found {found})')
    problems = checkpoint_problems(ckpt)
    if isinstance(ckpt.get('config'), dict):
        problems += [f'config: {p}' for p in saved_flag_problems(ckpt['config'])]
    if not problems:  # values of the right kind, in the ranges the flags allow
        problems = [f'config: {p}' for p in config_problems(Config(**{**COMMON_DEFAULTS, **ckpt['config']}))]
    if problems:
        raise ResumeRefused(f'{path} is damaged or was edited ({"; ".join(problems[:3])}); it cannot be resumed '
                            f'or predicted with: use another checkpoint of the run, or start a new run')
    return ckpt


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def tensor_dict(value):
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _an_evaluation(record):
    """One record of a run's history: an evaluated epoch and its accuracies (log.jsonl, the plot); a k trial
    of an earlier version scored validation only (test_acc None), and the run does not go on from it."""
    return isinstance(record, dict) and is_int(record.get('epoch')) and is_number(record.get('val_acc')) and (
        record.get('test_acc') is None or is_number(record['test_acc']))


def _partial_epoch(v):
    return v is None or (isinstance(v, dict) and is_int(v.get('epoch')) and v['epoch'] >= 0
                         and is_int(v.get('of')) and is_int(v.get('steps_done')) and 1 <= v['steps_done'] < v['of']
                         and is_number(v.get('loss_sum')) and is_rng_state(v.get('rng')))


def _epoch_time(r):
    return isinstance(r, dict) and isinstance(r.get('first_of_invocation'), bool) and all(
        r.get(key) is None or is_number(r[key]) for key in ('train_s', 'evaluate_s', 'checkpoint_s'))


# what resuming a checkpoint and predicting with it read, and what each must be (a checkpoint the package
# wrote always is: anything else was damaged or edited, and would fail later with a traceback)
CHECKPOINT_FIELDS = {
    'config': (dict, 'a dict'), 'data_info': (dict, 'a dict'), 'epoch': (lambda v: is_int(v) and v >= -1, 'an epoch'),
    'model': (tensor_dict, 'weights'), 'optimizer': (lambda v: isinstance(v, dict) and 'param_groups' in v,
                                                  "an optimiser's state"),
    'ema': (lambda v: v is None or (isinstance(v, dict) and tensor_dict(v.get('weights'))), 'None or averaged weights'),
    'best': (lambda v: isinstance(v, dict) and is_number(v.get('val_acc')) and 'epoch' in v and 'test_acc' in v,
             'the best evaluation (val_acc, epoch, test_acc)'),
    'history': (lambda v: isinstance(v, list) and all(_an_evaluation(r) for r in v), 'a list of evaluations'),
    'elapsed_s': (lambda v: is_number(v) and 0 <= v < math.inf, 'seconds'),
    'partial_epoch': (_partial_epoch, 'None or the steps of an epoch stopped mid-way'),
    'eval_bn_shares': (lambda v: is_int(v) and v >= 1, 'a number of parts, 1 or more'),
    'epoch_times': (lambda v: isinstance(v, list) and all(map(_epoch_time, v)), "a list of epochs' seconds"),
    'seconds': (lambda v: isinstance(v, dict) and all(map(is_number, v.values())), 'seconds by part'),
    'timed_epochs': (lambda v: is_int(v) and v >= 0, 'a number of epochs'),
}
DATA_INFO_FIELDS = {
    'dataset': (str, 'a name'), 'n_class': (lambda v: is_int(v) and v >= 2, 'a number of classes'),
    'fp_dim': (lambda v: is_int(v) and v >= 1, 'a feature width'),
    'image_shape': (lambda v: isinstance(v, list) and len(v) == 3 and all(is_int(d) and d >= 1 for d in v),
                    'three sizes'),
    'mean': (lambda v: isinstance(v, list) and len(v) == 3 and all(map(is_number, v)), 'three numbers'),
    'std': (lambda v: isinstance(v, list) and len(v) == 3 and all(map(is_number, v)), 'three numbers'),
    'class_names': (lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v), 'a list of names'),
}


# fields a checkpoint of today's format may lack, checked where present: it was written before they existed
# ('ema': no weight average), or holds none (a dataset without class names)
ADDED_SINCE = ('ema', 'partial_epoch', 'eval_bn_shares', 'epoch_times', 'seconds', 'timed_epochs', 'class_names')


def field_problems(record, fields, prefix=''):
    problems = []
    for name, (ok, meaning) in fields.items():
        value = record.get(name, _MISSING)
        if value is _MISSING and name in ADDED_SINCE:
            continue
        if value is _MISSING:
            problems.append(f'{prefix}{name} is missing')
        elif not (isinstance(value, ok) if isinstance(ok, type) else ok(value)):
            problems.append(f'{prefix}{name} is {type(value).__name__} {str(value)[:40]!r}, not {meaning}')
    return problems


_MISSING = object()


def checkpoint_problems(ckpt):
    """What in a checkpoint of today's format is missing or of the wrong kind, as short phrases."""
    problems = field_problems(ckpt, CHECKPOINT_FIELDS)
    if 'seconds' in ckpt and 'timed_epochs' not in ckpt:  # restored together
        problems.append('timed_epochs is missing beside seconds')
    # -1: no epoch finished yet, where a signal stopped the first one mid-way (its steps are what last.pt holds)
    if ckpt.get('epoch') == -1 and not isinstance(ckpt.get('partial_epoch'), dict):
        problems.append('epoch is -1 (none finished) with no partial epoch')
    if isinstance(ckpt.get('data_info'), dict):
        problems += field_problems(ckpt['data_info'], DATA_INFO_FIELDS, 'data_info.')
    return problems


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


def _may_change(name, ckpt):
    saved = ckpt['config']
    if name == 'eval_batch_size' and saved.get('eval_bn') == 'batch':
        return False  # with batch statistics at evaluation, the batch decides the predictions
    # a data file named by another path: only where the run's fingerprints tell its content (runs made
    # before they were recorded have none to check it by)
    fingerprinted = {'training labels', 'dataset'} <= set(ckpt['data_info'].get('input_fingerprints') or ())
    if name == 'noise_type':
        return fingerprinted and names_a_file(str(saved.get(name, '')))
    return name in MAY_CHANGE_ON_RESUME or name.endswith('_root') or (fingerprinted and name in DATA_FILE_FLAGS)


def differs(name, saved, value):
    """Whether a flag given again says other than the run recorded. Paths are compared as the places they
    name: a new run records them absolute (absolute_data_paths), and `--fp_checkpoint enc.pt` typed where it
    was names the same file; `--out_dir runs/` names the folder `runs` does."""
    if (names_a_path(name) or name.endswith('_dir')) and isinstance(saved, str) and isinstance(value, str):
        return os.path.abspath(saved) != os.path.abspath(value)
    return saved != value


def resumed_config(cfg, ckpt, also=()):
    """The saved configuration of the run being resumed. This invocation decides the device, and the
    flags that may change (and those named in `also`) where its command line gives them; a flag the
    package gained after the run was made takes this invocation's value (its default, unless given)."""
    current = vars(cfg)
    given = set(current.get('command_line_flags') or ())
    merged = {**current, **ckpt['config']}
    for name in current:
        if name in ALWAYS_FROM_THIS_RUN or (name in given and (_may_change(name, ckpt) or name in also)):
            merged[name] = current[name]
    if merged.get('fp_encoder') == 'features' and not merged.get('fp_checkpoint'):
        merged['fp_checkpoint'] = merged.get('fp_features')  # the features file's flag before --fp_checkpoint took it
    for name in FOLDED_FLAGS:
        merged.pop(name, None)
    if 'eval_from' not in ckpt['config'] and 'eval_from' not in given:  # a run made before --eval_from existed
        merged['eval_from'] = merged['warmup_epochs']  # evaluated from the end of its warm-up
    # --cuda_graph as a mode: a run recorded with the old on/off switch (or before it) gets today's default
    merged['cuda_graph'] = cuda_graph_mode(Config(**merged))
    return Config(**merged).freeze()


def check_resume_flags(cfg, ckpt, run_dir):
    """Refuse flags on a --resume command line that would change the run (a list of them), and a
    --nepoch below the epochs already trained."""
    saved = ckpt['config']
    given = set(vars(cfg).get('command_line_flags') or ()) - set(ALWAYS_FROM_THIS_RUN)
    changed = [f'--{name} {getattr(cfg, name)!r} (the run has {saved.get(name, "no such flag")!r})'
               for name in sorted(given) if not _may_change(name, ckpt) and differs(name, saved.get(name, object()), getattr(cfg, name))]
    if changed:
        raise ResumeRefused(f'--resume {run_dir} cannot change {", ".join(changed)}: drop those flags to continue '
                            f'the run, or start a new run with another --run_name')
    if 'nepoch' in given and cfg.nepoch < ckpt['epoch'] + 1:
        raise ResumeRefused(f'--nepoch {cfg.nepoch}: {run_dir} has already trained {ckpt["epoch"] + 1} epochs; '
                            f'give at least that many')


# how a run's fingerprints name its image files: by their path within their split's folder (within_common_folder),
# recorded as 'file paths'; runs recorded before it named them by their paths as given, and are checked so
WITHIN_SPLIT_FOLDER = "within each split's folder"
# the image files without their modification times: not compared on its own, it tells a refused resume
# whether only the times differ
SIZES_ONLY = 'image names and sizes'
# the newest modification time (ns) among the image files: not compared either (a change shows in 'image
# files'), it lets a refused resume name the images changed since the run recorded them
NEWEST_IMAGE = 'newest image modification (ns)'
NOT_COMPARED = (SIZES_ONLY, NEWEST_IMAGE)


def dataset_fingerprints(splits, saved=None):
    """What a resumed run must see again of its dataset, known before any feature is computed: the splits'
    content or paths and labels and, for image files, the files themselves (files_fingerprint: each one's
    size and modification time). A resume is refused on these before its features are extracted. Files
    are named within their split's folder, so that a dataset moved, or named by another path (a
    relative one from another working folder, a copy on a node's local disk), resumes; a run whose
    `saved` fingerprints named them as given is checked as it was made."""
    as_given = bool(saved) and saved.get('file paths') != WITHIN_SPLIT_FOLDER
    names = {split: splits.source(split) if splits.in_memory or as_given else within_common_folder(splits.source(split))
             for split in ('train', 'val', 'test')}
    digest = hashlib.sha1(splits.name.encode())
    for split in ('train', 'val', 'test'):
        digest.update((tensor_fingerprint(names[split]) if splits.in_memory else paths_fingerprint(names[split])).encode())
        labels = splits.labels(split) if split != 'train' else None
        if labels is not None:
            digest.update(tensor_fingerprint(labels).encode())
    found = {'dataset': digest.hexdigest()[:16]}
    if not splits.in_memory:  # kept apart from 'dataset', so runs recorded before it still resume
        both = [files_fingerprints(splits.paths(s), None if as_given else names[s]) for s in ('train', 'val', 'test')]
        found['image files'] = hashlib.sha1(' '.join(files for files, _, _ in both).encode()).hexdigest()[:16]
        found[NEWEST_IMAGE] = max(newest for _, _, newest in both)
        if not as_given:
            found['file paths'] = WITHIN_SPLIT_FOLDER
            found[SIZES_ONLY] = hashlib.sha1(' '.join(sizes for _, sizes, _ in both).encode()).hexdigest()[:16]
    return found


def input_fingerprints(dataset, data):
    """The dataset's fingerprints (dataset_fingerprints) with the run's training labels and the source
    of its f_p features."""
    info = data.info
    return {'training labels': tensor_fingerprint(data.noisy_labels),
            'f_p features': f"{info['fp_weights']}/{tensor_fingerprint(data.features['train'])}", **dataset}


def check_resume_inputs(saved, now, run_dir, splits=None):
    """Refuse a resume whose inputs differ from the run's, naming what changed (what the run did not
    record, made by an earlier version, is not compared) and, for image files (given the `splits`), how."""
    if not saved:  # a checkpoint written before inputs were recorded
        return
    changed = [name for name in now if name in saved and saved[name] != now[name] and name not in NOT_COMPARED]
    if changed:
        why = image_change(saved, now, splits) if 'image files' in changed else ''
        raise ResumeRefused(f'--resume {run_dir}: the {" and the ".join(changed)} differ from those the run was made '
                            f'with{why}; resume with the same inputs, or start a new run')


UNKEPT_TIMES = 'a copy that did not keep them, as cp -r makes; copy with cp -a or rsync -a, or resume where the run ' \
               'was made'


def image_change(saved, now, splits, shown=3):
    """How the image files differ, where it can be told: the images modified after the newest the run
    recorded (named, the first few), or every image's time with the sizes the same (a copy that did not
    keep the times); '' otherwise (a file replaced by one with an older time, a run recorded before)."""
    newer, total = None, 0
    if splits is not None and isinstance(saved.get(NEWEST_IMAGE), int):
        paths = [path for split in ('train', 'val', 'test') for path in splits.paths(split)]
        newer, total = files_modified_after(paths, saved[NEWEST_IMAGE]), len(paths)
    if newer and len(newer) < total:
        return f' ({len(newer):,} image{"s" if len(newer) > 1 else ""} modified after the run recorded them: ' \
               f'{first_few(newer, shown)})'
    if saved.get(SIZES_ONLY, '') == now.get(SIZES_ONLY):
        return f' (the same files by name and size, with other modification times: {UNKEPT_TIMES})'
    if newer:
        return ' (every image has a modification time after the run recorded them, and some differ in size: a ' \
               'copy made without its times (cp -r) and changed since, or other images)'
    return ''


def check_same_classes(splits, info, run_dir):
    """Refuse a resume whose class names differ from the run's (a --classes file in another order renames
    what the run learned; the fingerprints see indices, not names)."""
    saved = list(info.get('class_names') or [])
    now = list(getattr(splits, 'class_names', None) or [])
    if saved and now != saved:
        differ = [f'{a!r} here, {b!r} in the run' for a, b in zip(now, saved) if a != b][:2]
        raise ResumeRefused(f'--resume {run_dir}: the classes differ from the run\'s '
                            f'({"; ".join(differ) or "other names"}); resume with the run\'s class list, or start '
                            f'a new run')


def check_same_normalisation(splits, info, run_dir):
    """Refuse a resume whose images this version normalises otherwise than the run did (Clothing1M's own
    statistics since 2026-12-07, as the authors; ImageNet's before): its networks were trained on the other."""
    saved, now = (info.get('mean'), info.get('std')), (list(splits.mean), list(splits.std))
    if saved[0] is not None and any(abs(float(a) - b) > 1e-6 for a, b in zip([*saved[0], *saved[1]], [*now[0], *now[1]])):
        mean, std = (', '.join(f'{float(v):.4g}' for v in values) for values in saved)
        raise ResumeRefused(f'--resume {run_dir}: the run normalised its images with mean ({mean}) and std ({std}); '
                            f'this version normalises {splits.name} with mean {tuple(now[0])} and std {tuple(now[1])}: '
                            f'start a new run (or use the version that made it)')


def check_same_script(cfg, saved, run_dir, how):
    """Refuse to resume (how '--resume') or predict with (how 'predict.py') a run another script made: its
    dataset would be read with this script's reader, and fail naming flags the user never gave. Runs
    made before the script was recorded are told by the flags only their script has."""
    made_by, this = saved.get('script'), getattr(cfg, 'script', None)
    if made_by and this and made_by != this:
        instead = f'python {made_by} --resume {run_dir} ...' if how == '--resume' else \
            f'python predict.py {run_dir} --script {made_by}, or without --script'
        raise SetupError(f'{how} {run_dir}: the run was made by {made_by}, not {this}; run that script instead '
                         f'({instead})')
    # a flag no script has any more (FOLDED_FLAGS) tells no script apart
    theirs = sorted(set(saved.get('script_flags') or ()) - set(getattr(cfg, 'script_flags', None) or ())
                    - set(FOLDED_FLAGS))
    if not made_by and theirs and getattr(cfg, 'script_flags', None):
        raise SetupError(f'{how} {run_dir}: the run was made by another script (one with the flags '
                         f'{", ".join("--" + n for n in theirs[:4])}); run the script that made it instead')


# what predict.py takes from its own command line besides where the data lies: how many samples it draws
# (where not given, as many as the run drew)
PREDICTION_FLAGS = ('n_samples',)
# flags a resume may change that mean nothing to a prediction (it trains nothing): refused, not ignored
TRAINING_ONLY = ('nepoch', 'cuda_graph', 'frozen_kernels')


def prediction_config(cfg, ckpt, run_dir, folder=None):
    """The run's configuration as predict.py applies it. Its command line may say where the data lies
    (the script's dataset flags, e.g. --test of train_ImageFolder.py; the data roots), how to compute
    (the flags a resume may change) and --n_samples; with `folder` (--folder) no dataset split; a flag
    that would change the trained model is refused, never dropped."""
    saved = ckpt['config']
    given = set(vars(cfg).get('command_line_flags') or ()) - set(ALWAYS_FROM_THIS_RUN)
    dataset_flags = set(getattr(cfg, 'dataset_flags', None) or ())
    if folder:
        split_flags = sorted(given & dataset_flags)
        if split_flags:
            raise SetupError(f'--folder labels the images under {folder}, but '
                             f'{", ".join("--" + n for n in split_flags)} {"name" if len(split_flags) > 1 else "names"} '
                             f'a split of the dataset: give one or the other')
    pointless = sorted(given & set(TRAINING_ONLY))
    if pointless:
        script, them = saved.get('script', "the run's script"), 'them' if len(pointless) > 1 else 'it'
        raise SetupError(f'predict.py {run_dir} labels images with the run\'s best checkpoint and trains nothing, so '
                         f'{", ".join("--" + n for n in pointless)} would do nothing: drop {them} (python {script} '
                         f'--resume {run_dir} trains on)')
    refused = [f'--{name} {getattr(cfg, name)!r} (the run has {saved.get(name, "no such flag")!r})'
               for name in sorted(given - set(PREDICTION_FLAGS) - dataset_flags)
               if not _may_change(name, ckpt) and differs(name, saved.get(name, object()), getattr(cfg, name))]
    if refused:
        raise SetupError(f'predict.py {run_dir} applies the run as it was trained and does not take '
                         f'{", ".join(refused)}: drop those flags')
    return resumed_config(cfg, ckpt, also=given & (dataset_flags | set(PREDICTION_FLAGS)))


def check_writable(folder, flag):
    """Refuse a folder that cannot be written (checked at the nearest existing path, where an empty folder
    is made and removed at once: permissions alone pass root everywhere, /proc and /sys included), or
    that a file stands in the way of. `flag`: the flag that named it, or words ('the run folder')."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise SetupError(f'{flag} {folder}: {path} is a file, not a folder; choose another {flag}')
    # a run to go on with is not chosen anew: its folder is made writable, or a copy of it resumed
    fix = f'choose another {flag}' if flag.startswith('--') and flag != '--resume' else \
        'make it writable, or go on with a writable copy of the run'
    if not os.access(path, os.W_OK):
        raise SetupError(f'{flag} {folder} is not writable ({path} is read-only or not yours); {fix}')
    try:
        os.rmdir(tempfile.mkdtemp(prefix='.lra-probe-', dir=path))
    except OSError as exc:
        raise SetupError(f'{flag} {folder} is not writable (making a folder in {path}: {exc.strerror}); '
                         f'{fix}') from None


def _makedirs(folder):
    """os.makedirs that returns the folders it created, deepest first; where one cannot be made (a name
    too long), those it made before are removed again."""
    made = []
    for path in reversed(missing_folders(folder)):
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        except OSError:
            for done in made:
                os.rmdir(done)
            raise
        made.insert(0, path)
    return made


# ---- what a run folder's runs wrote ------------------------------------------------------------------

def _own_record(run_dir):
    """The folder's record ({} where there is none); a damaged one is refused: read as empty, it made the run's
    own files foreign to a resume, and predict.py wrote a record of its files alone over it."""
    path = os.path.join(run_dir, RECORD_NAME)
    if not os.path.lexists(path):
        return {}
    record = load_json(path)
    if record.get('written_by') != WRITTEN_BY or not isinstance(record.get('files'), list):
        has_run = any(os.path.isfile(os.path.join(run_dir, name)) for name in RUN_KINDS)
        fix = ("delete it: the folder's files are then taken for its run's, as in a run folder made before such "
               "records") if has_run else 'the folder holds no checkpoint to go on from: move it away and start anew'
        raise SetupError(f'{path} is damaged (it does not read as the record of the files this package wrote '
                         f'there); {fix}')
    return record


def read_record(run_dir):
    """The files (paths relative to run_dir) the folder's record says its runs wrote; none without one."""
    files = _own_record(run_dir).get('files')
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()


def recorded_kind(run_dir):
    """The checkpoint name (a key of RUN_KINDS) of the kind of run the record says wrote there. A record
    written before runs recorded their kind is read by the files it names (KIND_MARKS); None where there
    is no record or its files tell no kind."""
    record = _own_record(run_dir)
    if record.get('kind') in RUN_KINDS:
        return record['kind']
    files = read_record(run_dir)
    kinds = [kind for kind, marks in KIND_MARKS.items() if files & set(marks)]
    return kinds[0] if len(kinds) == 1 else None


# outputs a user may edit by hand (the label ranking: its corrections; a folder's predicted labels): the
# record keeps the digest of what the package wrote, and nothing writes over one that was edited since
EDITABLE_SUFFIXES = ('.csv',)


def recorded_digests(run_dir):
    """{relative path: sha1} of the editable files the package wrote, as it wrote them."""
    digests = _own_record(run_dir).get('digests')
    return {k: v for k, v in digests.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(digests, dict) else {}


def check_may_write_over(run_dir, names, what, action='write over'):
    """Refuse, before any work, to write over (or with `action` 'remove', to remove) a file among `names`
    (paths relative to run_dir) that no run of this package wrote, or an editable one (EDITABLE_SUFFIXES)
    edited since the package wrote it: `what` (a phrase: 'predict.py', '--resume RUN') would lose it."""
    digests, written = recorded_digests(run_dir), held_files(run_dir)  # a folder before records: its own
    for name in sorted(names):
        path = os.path.join(run_dir, name)
        if not os.path.lexists(path):
            continue
        if name not in written:
            raise SetupError(f'{path} is there and was not written by this package, and {what} would {action} '
                             f'it: move it away, then run again')
        if not name.endswith(EDITABLE_SUFFIXES):
            continue
        if name not in digests:  # written by a version that kept no digests: an edit cannot be told
            raise SetupError(f'{path} was written before this package kept digests of its CSVs, so whether you '
                             f'edited it cannot be told, and {what} would {action} it: move it out of the run '
                             f'folder to keep it, then run again')
        if file_digest(path) != digests[name]:
            raise SetupError(f'{path} was edited after this package wrote it, and {what} would {action} it: '
                             f'move it out of the run folder to keep your edits, then run again')


def _write_record(run_dir, files, kind=None, digests=None):
    record = {'written_by': WRITTEN_BY, 'format': RECORD_FORMAT, 'files': sorted(files)}
    if digests:
        record['digests'] = dict(sorted(digests.items()))
    save_json({**record, 'kind': kind} if kind else record, os.path.join(run_dir, RECORD_NAME))


def _a_runs(rel, files):
    """Whether the file at `rel` is a run's: the lock, the record, a file the record names, or a partial
    write of one or of the record (utils/storage/saving.partial_write_of)."""
    if rel in (LOCK_NAME, RECORD_NAME) or rel in files:
        return True
    head, name = os.path.split(rel)
    target = partial_write_of(name, legacy=True)
    return target is not None and (os.path.join(head, target) in files or target == RECORD_NAME)


def held_files(run_dir):
    """The files a resumed or predicted run's folder holds as its own: those its record names; in a
    folder of a version before records (no record, a run's checkpoint there), every file it holds, which
    the claim's first write then records."""
    if os.path.isfile(os.path.join(run_dir, RECORD_NAME)) or not any(
            os.path.isfile(os.path.join(run_dir, name)) for name in RUN_KINDS):
        return read_record(run_dir)
    return {os.path.relpath(os.path.join(root, name), run_dir) for root, _, names in os.walk(run_dir)
            for name in names if name != LOCK_NAME}


def foreign_files(run_dir, files):
    """What lies under run_dir that no run recorded writing (links to folders count as files). A link is
    never a run's, whatever its name: the package writes none, and a write through one lands outside."""
    found = []
    for root, dirs, names in os.walk(run_dir):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = os.path.relpath(os.path.join(root, name), run_dir)
            if os.path.islink(os.path.join(root, name)) or not _a_runs(rel, files):
                found.append(rel)
    return sorted(found)


def check_no_foreign_files(run_dir, what):
    """Refuse to go on in a run folder holding files no run of this package recorded writing there (a
    user's notes, a file under an output's name): `what` ('--resume RUN') writes its outputs there, and a
    run writes only in a folder of its own. A folder without a record (a version before records) is not
    judged: its files are the run's (held_files)."""
    foreign = foreign_files(run_dir, held_files(run_dir))
    if foreign:
        raise SetupError(f'{run_dir} holds files no run of this package recorded writing there '
                         f'({first_few(foreign)}), and {what} writes its outputs there: move those files away, '
                         f'then run again')


def check_fresh_folder(run_dir, checkpoint='last.pt', other='--run_name'):
    """Refuse a folder a fresh run may not write in: one holding a run (its `checkpoint`), a finished
    run whose checkpoint was removed, or any file its record does not say a run wrote (a user's files,
    a run of a version before the record). Returns the recorded files (none where the folder is absent)."""
    if not os.path.lexists(run_dir):
        return set()
    if not os.path.isdir(run_dir):
        raise SetupError(f'{run_dir} is a file, not a run folder; choose another {other}')
    if os.path.exists(os.path.join(run_dir, checkpoint)):
        if lock_is_held(run_dir):  # --resume would be refused too, while that run goes on
            raise SetupError(f'{run_dir} holds a run that is running right now; choose another {other}, or wait '
                             f'for it to finish')
        raise SetupError(f'{run_dir} already holds a run; continue it with --resume {run_dir} or choose '
                         f'another {other}')
    for held, kind in RUN_KINDS.items():
        if os.path.exists(os.path.join(run_dir, held)):
            raise SetupError(f'{run_dir} holds a {kind} run ({held}); choose another {other}')
    files = read_record(run_dir)
    written_by = recorded_kind(run_dir)
    if files and written_by not in (None, checkpoint):
        raise SetupError(f'{run_dir} holds what a {RUN_KINDS[written_by]} run wrote before it stopped '
                         f'({", ".join(sorted(files)[:3])}); choose another {other}, or move that run away')
    foreign = foreign_files(run_dir, files)
    if foreign:
        raise SetupError(f'{run_dir} holds files no run of this package recorded writing there '
                         f'({first_few(foreign)}); a run writes only in a folder of its own: choose '
                         f'another {other}, or move those files away')
    if FINISHED in files and os.path.exists(os.path.join(run_dir, FINISHED)):
        raise SetupError(f'{run_dir} holds a finished run ({FINISHED}; its {checkpoint} was removed); choose '
                         f'another {other}, or move that run away')
    return files


def lock_is_held(run_dir):
    """Whether a run holds run_dir's lock (RunClaim) now. Asked with a shared lock, let go at once: a run
    claiming the folder in that instant is refused as if another run held it, and can simply run again."""
    try:
        fd = os.open(os.path.join(run_dir, LOCK_NAME), os.O_RDONLY)
    except OSError:
        return False  # no lock file: no run holds the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # closing lets go of a lock taken here


def write_run_file(obj, run_dir, name):
    """A JSON file written into a run folder before its run starts (benchmarks.accuracy: the flags that
    started it), entered in the folder's record first, so the run knows it for a run's file. Returns what
    takes back exactly what this wrote (benchmarks.paper, when the run is refused): the file, the record
    as it was (or none), the folders made for it."""
    record_path = os.path.join(run_dir, RECORD_NAME)
    before = None
    if os.path.isfile(record_path):
        with open(record_path, 'rb') as f:
            before = f.read()
    files = read_record(run_dir) | {name}
    made = _makedirs(run_dir)
    _write_record(run_dir, files, recorded_kind(run_dir), recorded_digests(run_dir))
    save_json(obj, os.path.join(run_dir, name))

    def undo():
        os.remove(os.path.join(run_dir, name))
        if before is None:
            os.remove(record_path)
        else:
            atomic_write(record_path, lambda f: f.write(before))
        for path in made:  # deepest first
            if not os.listdir(path):
                os.rmdir(path)
    return undo


class RunClaim:
    """The run folder, locked (flock on RUN_DIR/.lock) for the run's life, and the record of what its
    runs wrote (RUN_DIR/.written.json). `checkpoint` is the file that says a run is there; `other`
    names the flag that picks another folder.

    A fresh run takes a folder that is absent (made here), or one holding nothing but what its record
    says runs wrote: a run that died before its first checkpoint, the k trials of one stopped while
    choosing k. Nothing there changes until the run writes its first file; then partial writes are
    swept and, for a fresh run, the dead run's log and best checkpoint removed (a fresh run never goes
    on from them). Each file is entered in the record before it is first written (utils/storage/saving tells the
    claim of every write into the folder). A claim released before any write leaves the folder as it
    found it: the lock file it made and the folders it made are removed."""

    def __init__(self, run_dir, fresh, flag='--out_dir', checkpoint='last.pt', other='--run_name',
                 resume_flag='--resume'):
        self.run_dir, self.fresh, self.checkpoint, self.other = run_dir, fresh, checkpoint, other
        self.made, self.fd, self.lock_made, self.writing, self.recording = [], None, False, False, False
        self.lock = threading.RLock()  # re-entered where a write's first note removes a dead run's leftovers
        check_writable(run_dir, flag if fresh else resume_flag)
        if fresh:
            check_fresh_folder(run_dir, checkpoint, other)
        try:
            self.made = _makedirs(run_dir)
            self._lock()
            # again under the lock: a run may have finished in the folder since it was looked at
            self.files = check_fresh_folder(run_dir, checkpoint, other) if fresh else held_files(run_dir)
            self.digests = recorded_digests(run_dir)
            self.unrecorded = not os.path.isfile(os.path.join(run_dir, RECORD_NAME))  # written at the first write
        except OSError as exc:
            self.release()
            raise SetupError(f'cannot create the run folder {run_dir} ({exc.strerror}); choose another {flag}') \
                from None
        except SetupError:
            self.release()
            raise
        owned_folder(run_dir, self._about_to_write, self._written, self._removed)
        self.recording = True

    def _lock(self):
        path = os.path.join(self.run_dir, LOCK_NAME)
        for _ in range(3):  # the run releasing the lock removes its file: lock the one there now
            try:
                self.fd, self.lock_made = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644), True
            except FileExistsError:
                try:
                    self.fd, self.lock_made = os.open(path, os.O_RDWR), False
                except FileNotFoundError:
                    continue
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                os.close(self.fd)
                self.fd, self.lock_made = None, False  # the file is the other run's now
                break
            if same_file(self.fd, path):
                return
            os.close(self.fd)
            self.fd, self.lock_made = None, False
        raise SetupError(f'{self.run_dir} is in use by another run right now; wait for it to finish' +
                         (f', or choose another {self.other}' if self.fresh else ''))

    def _about_to_write(self, rel):
        if rel == RECORD_NAME:
            return
        # checkpoints are written by a background thread while the loop appends to its log: one record
        # write at a time, each of the whole set (two at once could land the smaller set last)
        with self.lock:
            if not self.writing:
                self.writing = True
                recorded = set(self.files)  # an older version's partial writes are known by what they were for
                if self.fresh:  # what a run that died before its first checkpoint left (the record says so)
                    remove_files(self.run_dir, [name for name in LEFTOVERS if name in self.files])
                sweep_partial_writes(self.run_dir, legacy_targets=recorded)
            if rel not in self.files or self.unrecorded:
                self.files.add(rel)
                self.unrecorded = False
                _write_record(self.run_dir, self.files, self.checkpoint, self.digests)

    def _written(self, rel):
        if rel.endswith(EDITABLE_SUFFIXES):
            with self.lock:
                self.digests[rel] = file_digest(os.path.join(self.run_dir, rel))
                _write_record(self.run_dir, self.files, self.checkpoint, self.digests)

    def _removed(self, rel):
        # a file the package removed is no longer its own: one a user puts under that name later is theirs,
        # and is refused rather than written over or removed
        with self.lock:
            if rel in self.files:
                self.files.discard(rel)
                self.digests.pop(rel, None)
                self.unrecorded = False
                _write_record(self.run_dir, self.files, self.checkpoint, self.digests)

    def release(self):
        """Stop recording, remove the lock file where this claim made it and the folders it made where
        they are empty, and unlock."""
        if self.recording:  # (a claim refused in this process must not stop another claim's recording)
            owned_folder(self.run_dir, None)
            self.recording = False
        if self.fd is not None and self.lock_made:
            try:  # while still holding the flock: a run opening the file meanwhile sees it gone and retries
                os.remove(os.path.join(self.run_dir, LOCK_NAME))
            except FileNotFoundError:
                pass
            self.lock_made = False
        for path in self.made:
            if os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
        self.made = []
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def same_file(fd, path):
    """Whether `fd` is the file at `path` now (not one removed since it was opened): how a lock taken on
    a lock file is known to be the lock of the file there."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


STALE_SECONDS = 3600


def sweep_stale_cache_writes(cache_dir):
    """Temporary files in a shared cache older than an hour: writes whose process died (a younger one
    may be another run's write in progress)."""
    return sweep_partial_writes(cache_dir, older_than=time.time() - STALE_SECONDS)


def default_run_name(cfg):
    """<noise>_<f_p>_<diffusion encoder>_s<seed>_<time>, with -2, -3, ... where a run of the same second took
    that name (two commands started at once: the second was refused, told to choose a name it never chose)."""
    stamp = time.strftime('%Y%m%d-%H%M%S')
    noise = os.path.basename(cfg.noise_type).replace('.npy', '')
    if noise == 'own':  # the dataset's own labels: name the dataset
        noise = cfg.dataset or noise
    name = base = f'{noise}_{cfg.fp_encoder}_{cfg.diff_encoder}_s{cfg.seed}_{stamp}'
    for n in itertools.count(2):
        if not os.path.lexists(os.path.join(cfg.out_dir, name)):
            return name
        name = f'{base}-{n}'
