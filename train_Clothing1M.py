"""Train LRA-diffusion on Clothing1M (1M images with noisy labels, clean validation and test).

    python train_Clothing1M.py --clothing1m_root data/Clothing1M
    torchrun --nproc_per_node 4 train_Clothing1M.py --clothing1m_root data/Clothing1M

Reads the official annotation files (noisy_label_kv.txt, clean_label_kv.txt,
noisy_train_key_list.txt, clean_val_key_list.txt, clean_test_key_list.txt,
category_names_eng.txt) with the image paths they list relative to the root. --subset_list FILE
trains on a selected subset ('<key> <label>' lines, or bare keys labelled by noisy_label_kv.txt),
as the authors did. --fp_encoder classifier --fp_checkpoint FILE uses a classifier trained on
Clothing1M (e.g. a "Centrality and Consistency" ResNet-50) as f_p.
"""
from utils.cli import run_cli
from utils.config import IMAGE_FILE_DEFAULTS, parse_config
from utils.engine import main as run_script
from utils.files import read_clothing1m

DEFAULTS = dict(IMAGE_FILE_DEFAULTS, noise_type='clothing1m', k=20)  # the dataset's own noisy labels


def dataset_args(g):
    g.add_argument('--clothing1m_root', default='./data/Clothing1M', help='folder of the annotation files and images/')
    g.add_argument('--subset_list', default=None, help='train on this subset of the noisy training set')


def load_splits(cfg):
    return read_clothing1m(cfg.clothing1m_root, cfg.subset_list)


def main(argv=None):
    cfg = parse_config(__doc__, DEFAULTS, argv, dataset_args)
    return run_script(cfg, load_splits)


if __name__ == '__main__':
    run_cli(main)
