"""Train LRA-diffusion on Food-101N (noisy web labels), evaluated on the Food-101 test split.

    python train_Food101N.py --food101n_root data/Food-101N_release --food101_root data/food-101

Training images and labels come from Food-101N_release (meta/imagelist.tsv; the label is the
class folder); the entries of meta/verified_val.tsv verified as correct form the clean validation
split used for model selection (and are held out of training); Food-101's meta/test.txt is the
test split. Features (CLIP ViT-L/14 for f_p, an ImageNet ResNet-50 for the diffusion encoder) are
extracted once, in DataLoader workers, and cached; training runs on them. Scale out with
`torchrun --nproc_per_node N train_Food101N.py ...`.
"""
from utils.cli import run_cli
from utils.config import IMAGE_FILE_DEFAULTS, parse_config
from utils.engine import main as run_script
from utils.files import read_food101n

DEFAULTS = dict(IMAGE_FILE_DEFAULTS, noise_type='food101n', k=10)  # the dataset's own noisy labels


def dataset_args(g):
    g.add_argument('--food101n_root', default='./data/Food-101N_release', help='the Food-101N_release folder')
    g.add_argument('--food101_root', default='./data/food-101', help='the food-101 folder (test split)')


def load_splits(cfg):
    return read_food101n(cfg.food101n_root, cfg.food101_root)


def main(argv=None):
    cfg = parse_config(__doc__, DEFAULTS, argv, dataset_args)
    return run_script(cfg, load_splits)


if __name__ == '__main__':
    run_cli(main)
