"""Train LRA-diffusion on WebVision 1.0 (Google subset, first 50 classes).

    python train_WebVision.py --webvision_root data/webvision --imagenet_val_root data/ILSVRC2012/val

Training: info/train_filelist_google.txt (labels < 50). Validation (model selection): WebVision's
info/val_filelist.txt over val_images_256/. Test: the ILSVRC2012 validation images of the same 50
classes: the official flat folder (ILSVRC2012_val_00000001.JPEG ...) with its label file read directly
(--imagenet_val_labels, else ILSVRC2012_val_label.txt, val.txt, LOC_val_solution.csv or the devkit's
ground truth with its meta.mat beside the images, else the authors' published ILSVRC2012_val_label.txt,
fetched), or class-index folders (0/ … 49/), or WordNet-id folders mapped by info/synsets.txt.
Evaluation reports top-1 and top-5 accuracy (the 5 classes whose coordinates of the DDIM output are
closest to 1) on both, as the paper's WebVision table.

Defaults follow the authors' train_WebVision.py: 300 epochs (the cosine learning-rate horizon),
batch 256, warm-up 1, k 50, feature_dim 1024, CLIP ViT-L/14 as f_p, and a class-balanced draw of
500 images per class, redrawn every epoch (--per_class 500; 0 trains on every image each epoch).
Their retrieval weighs every sample of a batch alike (--candidate_weights uniform).
"""
import utils.runs.startup  # noqa: F401  first, before torch loads: a Ctrl-C meanwhile ends in one line

from train_Clothing1M import RECIPES as CLOTHING1M_RECIPES
from utils.data.webvision import check_n_class, read_webvision
from utils.engine import main as run_script
from utils.runs.cli import run_cli
from utils.runs.config import parse_config

# The authors' train_WebVision.py defaults (their commit 231e587); everything else: utils/runs/config.py.
DEFAULTS = dict(
    script='train_WebVision.py',
    dataset='webvision',
    noise_type='own',              # the dataset's own noisy labels
    nepoch=300,                    # the cosine's horizon too (--lr_horizon 0)
    batch_size=256,
    warmup_epochs=1,
    lr_horizon=0,
    eval_every=1,
    eval_from=0,                   # every epoch is evaluated, warm-up's too
    drop_last=True,                # their loader's drop_last: full batches only
    per_class=500,                 # a class-balanced draw of 500 per class, every epoch
    feature_dim=1024,
    k=50,
    candidate_weights='uniform',   # every sample of a batch weighs alike
    fp_encoder='CLIP',
    CLIP_type='ViT-L/14',
    diff_encoder='resnet50_l',     # an ImageNet ResNet-50 and their two-layer head
)


# What --recipe sets (utils/recipes.py): their train_WebVision.py trains as their train_Clothing1M.py does.
RECIPES = CLOTHING1M_RECIPES


def dataset_args(g):
    g.add_argument('--webvision_root', default='./data/webvision', help='folder holding info/, google/, val_images_256/')
    g.add_argument('--imagenet_val_root', default='./data/ILSVRC2012/val',
                   help='ILSVRC2012 validation images: the flat official folder, or class folders')
    g.add_argument('--imagenet_val_labels', default=None,
                   help='label file of a flat --imagenet_val_root (ILSVRC2012_val_label.txt, val.txt, '
                        'LOC_val_solution.csv or the devkit ground truth); default: found beside the images')
    g.add_argument('--n_class', type=int, default=50, help='the first N WebVision classes')


def load_splits(cfg):
    return read_webvision(cfg.webvision_root, cfg.imagenet_val_root, cfg.n_class, cfg.imagenet_val_labels,
                          cfg.inputs_dir)


def config(argv=None):
    cfg = parse_config(__doc__, DEFAULTS, RECIPES, argv, dataset_args, kind='files')
    check_n_class(cfg.n_class)  # refused with the flags, before a device is chosen or a file read
    return cfg


def main(argv=None):
    return run_script(config(argv), load_splits)


if __name__ == '__main__':
    run_cli(main)
