"""Offline demo: LRA-diffusion on scikit-learn's bundled handwritten digits with 40% label noise.

    python demo_digits.py

Runs the real pipeline (noise → f_p features → kNN retrieval → diffusion training → DDIM
evaluation) on data that `pip install -r requirements.txt` already brings, in about 20 seconds on
two idle CPU cores, and prints the accuracy of the noisy labels next to the accuracy LRA-diffusion
reaches on the clean test split. Any training flag can be added (e.g. --nepoch 60). It writes its run
folder under ./runs/demo (about 40 MB: two checkpoints) and its feature cache under ./cache/demo (about
22 MB); --out_dir and --cache_dir move them.
"""
import utils.runs.startup  # noqa: F401  first, before torch loads: a Ctrl-C meanwhile ends in one line

from train_CIFAR import RECIPES  # the digits stand in for CIFAR: the same protocol, held in memory
from utils.data.digits import load_digits_splits
from utils.engine import main as run_script
from utils.runs.cli import run_cli
from utils.runs.config import parse_config

DEFAULTS = dict(
    script='demo_digits.py',
    noise_type='digits-U-0.4',   # 40% uniform noise on the 1,197 training digits
    fp_encoder='raw',            # no pre-trained encoder offline: normalised pixels as f_p
    diff_encoder='fp_mlp',
    nepoch=100, warmup_epochs=10, eval_every=5, batch_size=50, feature_dim=128,
    lr_horizon=100, device='cpu',
    recipe='improved',           # a trained diffusion encoder: the authors' frozen one is 3 points lower here
    out_dir='./runs/demo', cache_dir='./cache/demo',
)


def load_splits(cfg):
    return load_digits_splits()


def config(argv=None):
    return parse_config(__doc__, DEFAULTS, RECIPES, argv)


def main(argv=None):
    summary, run_dir = run_script(config(argv), load_splits)
    if summary is None:  # a process of several --gpu_devices, or a rank other than 0: the summary is rank 0's
        return None
    print(f'\nnoisy training labels: {100 * summary["noisy_label_accuracy"]:.1f}% correct')
    print(f'LRA-diffusion, clean test split: {100 * summary["test_acc"]:.1f}% '
          f'(selected on validation at epoch {summary["best_epoch"]}; run folder {run_dir})')
    return summary


if __name__ == '__main__':
    run_cli(main)
