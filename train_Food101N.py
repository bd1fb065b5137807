"""Train LRA-diffusion on Food-101N (noisy web labels), evaluated on the Food-101 test split.

    python train_Food101N.py --food101n_root data/Food-101N_release --food101_root data/food-101

Training images and labels come from Food-101N_release (meta/imagelist.tsv; the label is the
class folder); the entries of meta/verified_val.tsv verified as correct form the clean validation
split used for model selection (and are held out of training); Food-101's meta/test.txt is the
test split. The f_p features (CLIP ViT-L/14) are extracted once, in DataLoader workers, and cached;
as the authors', the training images' (the retrieval keys) are of one random crop + flip of each
image (--fp_cache_view augmented; the centre crops under --recipe improved).
Scale out with `torchrun --nproc_per_node N train_Food101N.py ...`.

Defaults follow the authors' train_Food101N.py: 100 epochs, batch 256, k 10, feature_dim 1024,
CLIP ViT-L/14, and its candidate rule (--candidates neighbours: the labels of each sample's k+1
nearest neighbours, itself included, with no own label appended). Its learning-rate schedule is
hard-coded to a 10-epoch warm-up and a 200-epoch cosine horizon (its --warmup_epochs 1 is unused),
so --warmup_epochs 10 --lr_horizon 200 here. Its diffusion encoder (an ImageNet ResNet-50 with
the two-layer head) is never optimised and never leaves training mode: it reads each step's
augmented crops and normalises them with batch statistics, at evaluation too, in test batches of 512
(their default 4-GPU DataParallel run normalised per GPU: 64 images in training, 128 at test). The
defaults do the same (--diff_backbone tuned --freeze_diff_encoder --eval_bn batch
--eval_batch_size 512: the images are decoded every epoch, and a prediction depends on its batch).
`--recipe improved` is the fast path: the ResNet-50 features of the centre crops computed once, its
head trained, running statistics.

Deliberate differences: the authors select the model on the Food-101 test split (their reported
figure is the best test accuracy over epochs); this package selects on the clean verified_val split
and reports the test accuracy of that model. Their script loads a saved LRA-diffusion checkpoint
(denoiser and diffusion encoder) before training, so a run of theirs from scratch stops there; here
the head starts at its seeded random initialisation.
"""
import utils.runs.startup  # noqa: F401  first, before torch loads: a Ctrl-C meanwhile ends in one line

from utils.data.food101n import read_food101n
from utils.engine import main as run_script
from utils.recipes import IMPROVED, evaluation_batch, fixed_view, retrieves_per_step
from utils.runs.cli import run_cli
from utils.runs.config import parse_config

# The authors' train_Food101N.py defaults (their commit 231e587); everything else: utils/runs/config.py.
DEFAULTS = dict(
    script='train_Food101N.py',
    dataset='food101n',
    noise_type='own',              # the dataset's own noisy labels
    nepoch=100,
    batch_size=256,
    warmup_epochs=10,              # hard-coded in their loop (their --warmup_epochs 1 is unused)
    lr_horizon=200,                # hard-coded too: a 200-epoch cosine
    eval_every=1,
    eval_from=0,                   # every epoch is evaluated, warm-up's too
    drop_last=True,                # their loader's drop_last: full batches only
    feature_dim=1024,
    k=10,
    candidates='neighbours',       # the k+1 nearest neighbours' labels, no own label appended
    fp_encoder='CLIP',
    CLIP_type='ViT-L/14',
    diff_encoder='resnet50_l',     # an ImageNet ResNet-50 and their two-layer head
)


# What --recipe sets, for each flag it governs that the command line leaves unset (utils/recipes.py).
RECIPES = {
    'authors': dict(                   # their train_Food101N.py
        diff_backbone='tuned',         # the ResNet-50 reads augmented views decoded every epoch...
        freeze_diff_encoder=True,      # ...but their optimiser holds the denoiser only (its head stays random)
        eval_bn='batch',               # and it never leaves training mode: batch statistics at evaluation
        fp_cache_view=lambda c: 'clean' if fixed_view(c) else 'augmented',  # keys: f_p of one random crop + flip
        fp_train_view='cached',        # f_p read from the cache at every step
        per_step_retrieval=retrieves_per_step,
        ema_decay=0.0,                 # their EMA is updated and never read
        eval_batch_size=evaluation_batch(512),  # their test loader's batch
    ),
    'improved': IMPROVED,
}


def dataset_args(g):
    g.add_argument('--food101n_root', default='./data/Food-101N_release', help='the Food-101N_release folder')
    g.add_argument('--food101_root', default='./data/food-101', help='the food-101 folder (test split)')


def load_splits(cfg):
    return read_food101n(cfg.food101n_root, cfg.food101_root)


def config(argv=None):
    return parse_config(__doc__, DEFAULTS, RECIPES, argv, dataset_args, kind='files')


def main(argv=None):
    return run_script(config(argv), load_splits)


if __name__ == '__main__':
    run_cli(main)
