"""Every flag checked before any work: a bad value is refused in one line before data is read.

Without these checks a bad flag fails minutes into a run (a batch size of 0 after feature
extraction) or, worse, silently gives a wrong result (a negative learning rate, a noise rate of 1.5).
"""
import math
import os
import re

import torch

from utils.data.noise import OWN_LABELS, names_a_file, noise_dataset_problem, noise_problem
from utils.diff_encoders import DIFF_ENCODERS
from utils.encoders.factory import HUB_ENCODERS
from utils.errors import SetupError

AT_LEAST_ONE = ('nepoch', 'batch_size', 'eval_batch_size', 'encode_batch_size', 'k', 'feature_dim', 'n_timesteps',
                'eval_every', 'checkpoint_every', 'image_size')
NOT_NEGATIVE = ('n_samples', 'warmup_epochs', 'eval_from', 'num_workers', 'k_trial_epochs')  # seeds: seed_problems
DEVICE_TYPES = ('cpu', 'cuda', 'mps')
FOLDER_FLAGS = ('out_dir', 'cache_dir', 'data_root', 'inputs_dir', 'clip_download_root', 'resume')
MAX_SEED = 2 ** 32 - 1
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# the largest input of the f_p encoders offered (DINOv2 at 518 px) with room to spare; a larger size only
# fills memory (100000 px is killed for memory mid-extraction, its folder half made)
MAX_IMAGE_SIZE = 1024
# stochastic samples per image: its class frequencies resolve 1/N, and each batch is repeated N times in
# memory (10^11 had trained a whole run, then failed allocating 768 TB for its outputs)
MAX_N_SAMPLES = 10000
# the denoiser's depth and width, far past the paper's (3 layers of 256; 1024 wide on the image-file datasets):
# 100000 layers filled 20 GB of memory before the first step
MAX_N_LAYERS, MAX_FEATURE_DIM = 64, 16384
# each size flag's largest value, and why
LIMITS = {
    'n_samples': (MAX_N_SAMPLES, f'frequencies to 1/{MAX_N_SAMPLES}; each batch is repeated that many times in memory'),
    'image_size': (MAX_IMAGE_SIZE, 'no encoder here reads larger images'),
    'n_layers': (MAX_N_LAYERS, 'far past any denoiser of the paper; each layer holds its weights in memory'),
    'feature_dim': (MAX_FEATURE_DIM, "far past the paper's widths; the weights grow with its square"),
}
# scripts whose dataset is fixed and installed with the requirements (its name, what it is): the in-memory data
# flags say nothing to them
BUNDLED_DATA = {'demo_digits.py': ('digits', "scikit-learn's bundled digits")}
# a rate inside a generated noise name: <dataset>-U-0.4, <name>_A_0.3
NOISE_RATE = re.compile(r'[-_]([UA])[-_]([^_]+)')


def config_problems(cfg):
    """Every problem with the flags of a run, as short phrases naming the flag and the allowed range."""
    problems = []
    for name in AT_LEAST_ONE:
        value = getattr(cfg, name, 1)
        if value is not None and value < 1:
            problems.append(f'--{name} {value} must be at least 1')
    for k in getattr(cfg, 'k_choices', None) or ():
        if k < 1:
            problems.append(f'--k_choices {k} must be at least 1')
    problems += k_select_problems(cfg)
    for name, value in sorted(vars(cfg).items()):  # '' would mean the folder the command runs in
        if value == '' and (name in FOLDER_FLAGS or name.endswith('_root') or name.endswith('_dir')):
            problems.append(f"--{name} '' names no folder; give a path (. for this folder)")
    for name in NOT_NEGATIVE:
        value = getattr(cfg, name, 0)
        if value is not None and value < 0:
            problems.append(f'--{name} {value} must not be negative')
    for name in ('seed', 'noise_seed'):
        value = getattr(cfg, name, None)
        problems += seed_problems(value, f'--{name}') if value is not None else []
    for name in ('lr', 'lr_horizon', 'grad_clip'):
        value = getattr(cfg, name, 1)
        if name == 'lr_horizon' and value == 0:
            continue  # 0: the horizon is --nepoch (the authors' image-file scripts)
        if not math.isfinite(value) or value <= 0:
            problems.append(f'--{name} {value} must be a finite number above 0' +
                            (' (or 0: --nepoch)' if name == 'lr_horizon' else ''))
        elif name == 'lr' and value > FLOAT32_MAX:  # the optimiser's step is computed in float32
            problems.append(f'--lr {value} must be at most {FLOAT32_MAX:.4g}, float32\'s largest (the optimiser '
                            f'computes its steps in float32)')
    n_layers = getattr(cfg, 'n_layers', None)
    if n_layers is not None and n_layers < 2:
        problems.append(f'--n_layers {n_layers} must be at least 2 (the x_e gate sits after the first)')
    decay = getattr(cfg, 'ema_decay', None)
    if decay is not None and not 0 <= decay < 1:
        problems.append(f'--ema_decay {decay} must lie in [0, 1) (0: no average)')
    n_timesteps = getattr(cfg, 'n_timesteps', None)
    if n_timesteps and n_timesteps >= 1 and not 1 <= cfg.ddim_n_step <= n_timesteps:
        problems.append(f'--ddim_n_step {cfg.ddim_n_step} must lie in [1, --n_timesteps {n_timesteps}]')
    problems += device_problems(cfg.device)
    problems += noise_rate_problems(getattr(cfg, 'noise_type', None))
    if getattr(cfg, 'run_name', None) is not None and not is_plain_name(cfg.run_name):
        problems.append(f'--run_name {cfg.run_name!r} must be a plain folder name inside --out_dir '
                        f'(no "/", ".." or absolute path)')
    return problems


def seed_problems(seed, flag='--seed'):
    """A seed's problems as the scripts' --seed has them, named by `flag` (a tool passing seeds on to
    them): numpy's and torch's generators take 32-bit seeds."""
    if seed < 0:
        return [f'{flag} {seed} must not be negative']
    return [f'{flag} {seed} must be at most {MAX_SEED}'] if seed > MAX_SEED else []


def k_select_problems(cfg):
    """--k_select model needs several k to try, and trials no longer than the run."""
    if getattr(cfg, 'k_select', 'vote') != 'model':
        trial = getattr(cfg, 'k_trial_epochs', 0)
        return [f'--k_trial_epochs {trial} applies to --k_select model only'] if trial else []
    if len(set(cfg.k_choices or ())) < 2:
        return ['--k_select model needs at least two --k_choices to try (e.g. --k_choices 1 10 50)']
    trial = getattr(cfg, 'k_trial_epochs', 0) or 0
    if trial > cfg.nepoch:
        return [f'--k_trial_epochs {trial} must not exceed --nepoch {cfg.nepoch}']
    return []


def device_problems(name):
    if name == 'auto':
        return []
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        return [f'--device {name!r} is not a device: use auto, cpu, cuda or cuda:N']
    return []


def noise_rate_problems(noise_type):
    if not noise_type or names_a_file(noise_type):
        return []
    problems = []
    for kind, rate in NOISE_RATE.findall(noise_type):
        try:
            value = float(rate)
        except ValueError:
            continue
        if not 0 <= value <= 1:
            problems.append(f'the {kind} noise rate {rate} in --noise_type {noise_type} is out of range: '
                            f'rates lie in [0, 1]')
    return problems


def noise_type_problems(cfg):
    """--noise_type naming no labels (a noise of another dataset than --dataset, a typo, a missing file or
    CIFAR-N file, a hybrid on such a base), found before the dataset is read or downloaded. Not part of
    config_problems: a saved run's config is not damaged because its noise file has moved since."""
    noise_type = getattr(cfg, 'noise_type', None)
    if not noise_type or noise_type == OWN_LABELS:
        return []
    # the dataset the run trains on, where the script or the command names it
    script = getattr(cfg, 'script', None)
    dataset = BUNDLED_DATA[script][0] if script in BUNDLED_DATA else getattr(cfg, 'dataset', None)
    mismatch = dataset and noise_dataset_problem(noise_type, dataset)
    if mismatch:  # the real problem, before any file the name would need
        return [mismatch]
    cifar_n_dir = getattr(cfg, 'cifar_n_dir', None)
    problem = noise_problem(noise_type, cifar_n_dirs=[cifar_n_dir] if cifar_n_dir else [])
    return [problem] if problem else []


def is_plain_name(name):
    return bool(name) and name not in ('.', '..') and os.sep not in name and '/' not in name \
        and not os.path.isabs(name)


# the f_p encoders that read each encoder flag (utils/encoders/factory.build_fp_encoder)
FP_ENCODER_FLAGS = {'fp_checkpoint': ('SimCLR', 'classifier', 'CC', 'features', *HUB_ENCODERS),
                    'CLIP_type': ('CLIP',), 'clip_download_root': ('CLIP',), 'clip_tower': ('CLIP',),
                    'fp_arch': ('classifier',), 'fp_model': HUB_ENCODERS, 'fp_pretrained': HUB_ENCODERS}


def limit_problems(cfg, given=None):
    """Sizes past what any run needs (LIMITS), where this command line gives them (`given`: default, the
    config's command_line_flags; a run saved before the limits existed keeps its own values: it is not damaged)."""
    given = set(getattr(cfg, 'command_line_flags', ()) if given is None else given)
    return [f'--{name} {value} must be at most {most} ({why})' for name, (most, why) in LIMITS.items()
            if name in given and (value := getattr(cfg, name, None)) is not None and value > most]


def ignored_flag_problems(cfg):
    """A flag given for a part the run does not have would be silently ignored: it is refused instead (an
    f_p encoder's flags with another --fp_encoder, the ImageNet backbone flags where --diff_encoder builds
    no ImageNet backbone, --k beside --k_choices, --k and the choice of k without retrieval (--candidates own),
    --val_fraction beside --val)."""
    given = set(getattr(cfg, 'command_line_flags', ()))
    if getattr(cfg, 'resume', None):
        return []
    fp = getattr(cfg, 'fp_encoder', None)
    problems = [f'--{flag} applies to --fp_encoder {" / ".join(readers)} only, not {fp}; drop it'
                for flag, readers in FP_ENCODER_FLAGS.items() if flag in given and fp and fp not in readers]
    name = getattr(cfg, 'diff_encoder', None)
    if name in DIFF_ENCODERS and DIFF_ENCODERS[name][0] != 'cached':
        problems += [f'--{flag} applies to the *_l diffusion encoders only (--diff_encoder {name} has no ImageNet '
                     f'backbone); drop it or choose a *_l --diff_encoder'
                     for flag in ('diff_encoder_weights', 'diff_backbone') if flag in given]
    if 'k' in given and getattr(cfg, 'k_choices', None):
        problems.append(f'--k applies only without --k_choices (they choose the run\'s k among '
                        f'{" ".join(map(str, cfg.k_choices))}); drop one of them')
    if getattr(cfg, 'script', None) in BUNDLED_DATA:  # its data comes with scikit-learn: nothing to find or fetch
        problems += [f'--{flag} does not apply to {cfg.script}, which trains on {BUNDLED_DATA[cfg.script][1]}; drop it '
                     f'(train_CIFAR.py reads it)' for flag in ('dataset', 'data_root', 'download', 'cifar_n_dir')
                     if flag in given]
    if getattr(cfg, 'candidates', None) == 'own':  # no retrieval: no neighbours to count or choose among
        problems += [f'--{flag} applies only where the neighbours\' labels are candidates (--candidates own trains '
                     f'on each image\'s own noisy label alone); drop it'
                     for flag in ('k', 'k_choices', 'k_select', 'k_trial_epochs') if flag in given]
    if 'val_fraction' in given and getattr(cfg, 'val', None):
        problems.append('--val_fraction applies only without --val (it carves the validation images out of '
                        '--train); drop one of them')
    return problems


def check_config(cfg):
    """Refuse bad flags in one line, before any data is read."""
    problems = config_problems(cfg) + limit_problems(cfg) + ignored_flag_problems(cfg) + noise_type_problems(cfg)
    if problems:
        raise SetupError('; '.join(problems))
