"""Train LRA-diffusion on your own images with noisy labels, and rank the labels most likely wrong.

    python train_ImageFolder.py --train labels.csv --val clean_val/ --test clean_test/ \\
        --fp_encoder timm --fp_model vit_base_patch14_dinov2.lvd142m --image_size 518

--train is a CSV of path,label (the noisy labels: class names or indices; paths relative to the
CSV's folder, or absolute) or a folder of class folders (<class name>/<image>). --val and --test
(clean labels) take the same forms. Without --val a seeded --val_fraction of each class is held out
of training as the validation split, with its noisy labels (the summary says so: model selection
then rests on noisy labels); without --test the test split is the validation split. Besides the
engine's outputs the run folder holds train_label_ranking.csv (path, noisy label, denoised label,
confidence; the likely mislabelled first) and classes.txt.
"""
from utils.data.own_images import read_image_folder
from utils.engine import main as run_script
from utils.errors import SetupError
from utils.runs.cli import run_cli
from utils.runs.config import IMAGE_FILE_DEFAULTS, parse_config

DEFAULTS = dict(IMAGE_FILE_DEFAULTS, script='train_ImageFolder.py',
                noise_type='own', dataset='imagefolder', k=10)  # the given (noisy) labels


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


def main(argv=None):
    cfg = parse_config(__doc__, DEFAULTS, argv, dataset_args, kind='files')
    return run_script(cfg, load_splits)


if __name__ == '__main__':
    run_cli(main)
