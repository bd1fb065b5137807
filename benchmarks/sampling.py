"""Which class frequencies rank mislabelled images best: two stochastic samplers and the retrieval votes (CPU).

    python -m benchmarks.sampling --out_dir /tmp/sampling                    # seeds 123 1 2, under a minute
    python -m benchmarks.sampling --out_dir /tmp/sampling --seeds 123 --n_samples 4     # a quick look

train_probs.npy, the label ranking and predict.py's _probs.npy count the classes of --n_samples
stochastic DDIM samples per image. Two samplers start from y_T ~ N(0, I): the package's adds fresh
noise at every step (η = 1); the authors' `reverse_ddim(stochastic=True)` adds none (η = 0). For each
seed one run trains on scikit-learn's digits with 40 % uniform label noise (the demo's network, 30
epochs, no samples drawn), and its best-validation model then labels the training images under each
sampler; beside them, the retrieval votes the ranking reads without samples (--n_samples 0: the share
of each image's candidate labels per class). Reported per row and seed: the accuracy of the most
frequent class, how often it is the deterministic label (the run's answer), the mean probability of
the clean label beside that of the given one on the flipped images, and two AUROCs of finding the
flipped images: by a low probability of the given label (what a label-issue tool reads from
train_probs.npy), and by train_label_ranking.csv's order (the deterministic label's disagreement
first, then that probability). Nothing is selected on the test split. Writes sampling.json and
sampling.md under --out_dir.
"""
import argparse
import contextlib
import datetime
import io
import os
import sys

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

import demo_digits
from benchmarks.common import device_line
from utils.data.digits import load_digits_splits
from utils.engine import run
from utils.errors import SetupError
from utils.predict import label_images
from utils.prepare import build_encoders, features_of_split
from utils.retrieval import candidate_rows, neighbour_table, neighbours_to_search
from utils.runs.cli import run_cli
from utils.runs.folders import load_run, prediction_config
from utils.runs.outputs import ranking_order, retrieval_votes
from utils.runtime.devices import resolve_device
from utils.storage.loading import load_json
from utils.storage.saving import atomic_write, save_json

SAMPLERS = {'η = 1 (this package)': 1.0, 'η = 0 (the authors\' stochastic DDIM)': 0.0}
VOTES = 'retrieval votes (--n_samples 0)'  # what the ranking reads without samples: no sampler, set beside them
# 30 epochs at a peak rate of 3e-3, as tests/test_robustness.py trains the digits to learn
TRAINING = ['--nepoch', '30', '--lr_horizon', '30', '--warmup_epochs', '4', '--eval_every', '3', '--lr', '3e-3',
            '--n_samples', '0']


def trained_run(out_dir, seed):
    """The run folder of one seed's training on the noisy digits: trained once (a second call reuses it, one
    stopped is resumed); a run of other flags there is refused, not measured."""
    run_dir = os.path.join(out_dir, 'runs', f'seed{seed}')
    argv = ['--out_dir', os.path.join(out_dir, 'runs'), '--cache_dir', os.path.join(out_dir, 'cache'), '--run_name',
            f'seed{seed}', '--seed', str(seed), *TRAINING]
    check_same_training(run_dir, demo_digits.config(argv))
    if not os.path.isfile(os.path.join(run_dir, 'summary.json')):
        stopped = os.path.isfile(os.path.join(run_dir, 'last.pt'))
        cfg = demo_digits.config(['--resume', run_dir] if stopped else argv)
        with contextlib.redirect_stdout(io.StringIO()):
            run(cfg, demo_digits.load_splits)
    return run_dir


def check_same_training(run_dir, wanted):
    """Refuse a run folder whose run is not this benchmark's for its seed (another noise, schedule or seed)."""
    made = load_json(os.path.join(run_dir, 'config.json'))
    names = ['noise_type', 'seed', *(flag[2:] for flag in TRAINING[::2])]
    other = [f'--{name} {made[name]} (here: {getattr(wanted, name)})' for name in names
             if name in made and made[name] != getattr(wanted, name)]
    if other:
        raise SetupError(f'{run_dir} holds a run of other flags ({", ".join(other)}); give another --out_dir')


def prediction_of(run_dir, n_samples):
    """What predict.py would apply the run with, drawing n_samples: (its flags, the run's best checkpoint,
    the run's configuration), read once for every kind of frequency."""
    cfg = demo_digits.config(['--n_samples', str(n_samples)])
    ckpt = load_run(run_dir, 'best.pt')
    return cfg, ckpt, prediction_config(cfg, ckpt, run_dir)


def sampled(run_dir, prediction, eta):
    """(deterministic labels, sampled class frequencies) of the training images under the run's best model."""
    cfg, ckpt, saved = prediction
    _, labels, probs, _, _ = label_images(cfg, demo_digits.load_splits, run_dir, ckpt, saved, 'train', None,
                                          sample_eta=eta)
    return labels, probs.cpu().numpy()


def votes_of(prediction, noisy):
    """The retrieval votes the ranking falls back to without samples (--n_samples 0): the share of each
    training image's candidates (its neighbours' noisy labels and its own) per class, as the run searched."""
    _, ckpt, saved = prediction
    info = ckpt['data_info']
    encoders = build_encoders(saved, info['dataset'], tuple(info['image_shape']), tuple(info['mean']),
                              tuple(info['std']), torch.device('cpu'))
    keys = features_of_split(saved, load_digits_splits(), 'train', encoders, log=lambda *_: None)[0]
    labels = torch.as_tensor(noisy)
    neighbours = neighbour_table(keys, neighbours_to_search(saved.k, saved.candidates))
    return retrieval_votes(candidate_rows(labels[neighbours], labels, saved.candidates), info['n_class'])


def scores(labels, probs, noisy, clean):
    """How well the frequencies find the flipped labels, and how they sit with the deterministic labels."""
    rows, flipped = np.arange(len(noisy)), noisy != clean
    place = np.empty(len(noisy))
    place[ranking_order(noisy, labels, probs)] = rows
    return {'auroc_ranking': float(roc_auc_score(flipped, -place)),
            'most_sampled_accuracy': float(np.mean(probs.argmax(1) == clean)),
            'agrees_with_deterministic': float(np.mean(probs.argmax(1) == labels)),
            'flipped_clean_mass': float(probs[flipped, clean[flipped]].mean()),
            'flipped_given_mass': float(probs[flipped, noisy[flipped]].mean()),
            'auroc_flipped': float(roc_auc_score(flipped, -probs[rows, noisy]))}


def measure(out_dir, seeds, n_samples):
    clean = load_digits_splits().train_clean.numpy()
    rows = []
    for seed in seeds:
        run_dir = trained_run(out_dir, seed)
        noisy = np.load(os.path.join(run_dir, 'train_noisy_labels.npy'))
        prediction = prediction_of(run_dir, n_samples)
        for name, eta in SAMPLERS.items():
            labels, probs = sampled(run_dir, prediction, eta)
            rows.append({'seed': seed, 'sampler': name, 'eta': eta, 'n_samples': n_samples,
                         'deterministic_accuracy': float(np.mean(labels == clean)),
                         **scores(labels, probs, noisy, clean)})
        rows.append({'seed': seed, 'sampler': VOTES, 'eta': None, 'n_samples': 0,
                     'deterministic_accuracy': rows[-1]['deterministic_accuracy'],
                     **scores(labels, votes_of(prediction, noisy), noisy, clean)})
    return rows


def markdown(rows):
    lines = ['| frequencies | seed | most frequent class correct | agrees with the deterministic label | flipped: mass '
             'on clean / on given | AUROC: the given label\'s probability | AUROC: train_label_ranking.csv\'s order |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['seed']} | {100 * r['most_sampled_accuracy']:.1f}% "
                     f"| {100 * r['agrees_with_deterministic']:.1f}% | {r['flipped_clean_mass']:.3f} / "
                     f"{r['flipped_given_mass']:.3f} | {r['auroc_flipped']:.3f} | {r['auroc_ranking']:.3f} |")
    return '\n'.join(lines) + '\n'


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out_dir', required=True, help='runs, cache and the results go here')
    p.add_argument('--seeds', type=int, nargs='+', default=[123, 1, 2], help='one training run per seed')
    p.add_argument('--n_samples', type=int, default=8, help='stochastic samples per training image')
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.n_samples < 1:
        parser().error(f'--n_samples {args.n_samples}: the samplers need at least one sample an image')
    rows = measure(args.out_dir, args.seeds, args.n_samples)
    save_json({'command': 'python -m benchmarks.sampling ' + ' '.join(argv), 'date_utc': str(datetime.date.today()),
               'device': device_line(resolve_device('cpu')), 'rows': rows}, os.path.join(args.out_dir, 'sampling.json'))
    table = markdown(rows)
    atomic_write(os.path.join(args.out_dir, 'sampling.md'), lambda f: f.write(table.encode()))
    print(table)
    return rows


if __name__ == '__main__':
    run_cli(main)
