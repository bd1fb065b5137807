"""Train LRA-diffusion on your own images with noisy labels, and rank the labels most likely wrong.

    python train_ImageFolder.py --train labels.csv --val clean_val/ --test clean_test/ \\
        --fp_encoder timm --fp_model vit_base_patch14_dinov2.lvd142m --image_size 518

--train is a CSV of path,label (the noisy labels: class names or indices; paths relative to the
CSV's folder, or absolute) or a folder of class folders (<class name>/<image>). --val and --test
(clean labels) take the same forms. Without --val a seeded --val_fraction of each class is held out
of training as the validation split, with its noisy labels (the summary says so: model selection
then rests on noisy labels; those images are in no ranking: `python predict.py RUN --split val`
labels them); without --test the test split is the validation split. Besides the
engine's outputs the run folder holds train_label_ranking.csv (path, noisy label, denoised label,
confidence; the likely mislabelled first) and classes.txt.
"""
import utils.runs.startup  # noqa: F401  first, before torch loads: a Ctrl-C meanwhile ends in one line

from utils.data.own_images import read_image_folder
from utils.engine import main as run_script
from utils.errors import SetupError
from utils.recipes import IMPROVED, evaluation_batch, fixed_view, reads_images, retrieves_per_step
from utils.runs.cli import run_cli
from utils.runs.config import parse_config

# Your own images: the authors' large-image defaults (their Clothing1M/WebVision scripts') where they apply.
DEFAULTS = dict(
    script='train_ImageFolder.py',
    dataset='imagefolder',
    noise_type='own',              # the given (noisy) labels
    batch_size=256,
    warmup_epochs=1,
    lr_horizon=0,                  # the cosine over --nepoch
    eval_every=1,
    feature_dim=1024,
    k=10,
    fp_encoder='CLIP',
    CLIP_type='ViT-L/14',
    diff_encoder='resnet50_l',     # an ImageNet ResNet-50 and the authors' two-layer head
)


# What --recipe sets, for each flag it governs that the command line leaves unset (utils/recipes.py).
RECIPES = {
    'authors': dict(                   # no authors' script for your own images: their large-image protocol
        diff_backbone='cached',        # with the frozen backbone's features cached (it never sees the images)
        freeze_diff_encoder=False,
        eval_bn='running',
        fp_cache_view='clean',
        fp_train_view=lambda c: 'augmented' if reads_images(c) and not fixed_view(c) else 'cached',
        per_step_retrieval=retrieves_per_step,
        ema_decay=0.0,
        eval_batch_size=evaluation_batch(),
    ),
    'improved': IMPROVED,
}


def dataset_args(g):
    g.add_argument('--train', default=None, help='noisy-labelled training images: a CSV of path,label or class folders')
    g.add_argument('--val', default=None, help='clean validation images (CSV or class folders); default: carved '
                                               'from --train, with noisy labels')
    g.add_argument('--test', default=None, help='clean test images (CSV or class folders); default: the validation split')
    g.add_argument('--classes', default=None, help='a file of class names, one per line (order = index); default: '
                                                   'the class folders, or the names (or 0..max index) in the CSV')
    g.add_argument('--val_fraction', type=float, default=0.1, help='share of each class held out without --val')


def load_splits(cfg):
    if not cfg.train:
        raise SetupError('--train is missing: pass a CSV of path,label or a folder of class folders')
    if not 0 < cfg.val_fraction < 1:
        raise SetupError(f'--val_fraction {cfg.val_fraction} must lie between 0 and 1')
    return read_image_folder(cfg.train, cfg.val, cfg.test, cfg.classes, cfg.val_fraction, cfg.seed)


def config(argv=None):
    return parse_config(__doc__, DEFAULTS, RECIPES, argv, dataset_args, kind='files')


def main(argv=None):
    return run_script(config(argv), load_splits)


if __name__ == '__main__':
    run_cli(main)
