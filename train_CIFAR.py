"""Train LRA-diffusion on CIFAR-10/100 with noisy labels (45k noisy train / 5k clean val / 10k test).

    python train_CIFAR.py --noise_type cifar10-1-0.35 --fp_encoder CLIP --CLIP_type ViT-L/14

The dataset comes from --dataset, or else the noise name's prefix (cifar10, cifar100). See README.md
for the flags.
"""
import utils.runs.startup  # noqa: F401  first, before torch loads: a Ctrl-C meanwhile ends in one line

from utils.data.cifar import load_cifar
from utils.data.noise import dataset_of
from utils.engine import main as run_script
from utils.recipes import IMPROVED, evaluation_batch, fixed_view, retrieves_per_step
from utils.runs.cli import run_cli
from utils.runs.config import parse_config

# The authors' train_CIFAR.py defaults (their commit 231e587); everything else: utils/runs/config.py.
DEFAULTS = dict(
    script='train_CIFAR.py',
    noise_type='cifar10-1-0.35',   # 35% type-I PMD noise, the paper's headline setting
    nepoch=200,                    # the paper's runs: 200 epochs of a 1000-epoch cosine
    batch_size=200,
    warmup_epochs=5,
    feature_dim=512,
    k=10,
    ddim_n_step=10,
    fp_encoder='SimCLR',
    CLIP_type='ViT-L/14',
    diff_encoder='resnet34',
    lr=1e-3,
    lr_horizon=1000,               # hard-coded in their schedule, whatever --nepoch says
)


# What --recipe sets, for each flag it governs that the command line leaves unset (utils/recipes.py).
RECIPES = {
    'authors': dict(                   # their train_CIFAR.py, exactly
        diff_backbone='cached',        # (no ImageNet backbone here: the CIFAR-stem ResNet reads the image)
        freeze_diff_encoder=True,      # their optimiser holds the denoiser only: x_e from a random ResNet
        eval_bn='batch',               # their ResNet never leaves training mode: batch statistics at evaluation
        fp_cache_view=lambda c: 'clean' if fixed_view(c) else 'augmented',  # keys: f_p of one random crop + flip
        fp_train_view=lambda c: 'augmented' if c.fp_encoder == 'SimCLR' else 'cached',  # SimCLR re-encodes each
        per_step_retrieval=retrieves_per_step,                              # augmented batch and searches anew
        ema_decay=0.0,                 # their EMA is updated and never read
        eval_batch_size=evaluation_batch(),  # with batch statistics: their evaluation batches, --batch_size
    ),
    'improved': IMPROVED,
}


def load_splits(cfg):
    return load_cifar(cfg.dataset or dataset_of(cfg.noise_type), cfg.data_root, download=cfg.download)


def config(argv=None):
    return parse_config(__doc__, DEFAULTS, RECIPES, argv)


def main(argv=None):
    return run_script(config(argv), load_splits)


if __name__ == '__main__':
    run_cli(main)
