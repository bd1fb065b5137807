"""Train LRA-diffusion on Clothing1M (1M images with noisy labels, clean validation and test).

    python train_Clothing1M.py --clothing1m_root data/Clothing1M
    torchrun --nproc_per_node 4 train_Clothing1M.py --clothing1m_root data/Clothing1M

Reads the official annotation files (noisy_label_kv.txt, clean_label_kv.txt,
noisy_train_key_list.txt, clean_val_key_list.txt, clean_test_key_list.txt,
category_names_eng.txt) with the image paths they list relative to the root. As the authors, it
trains on the `cc_select` subset by default: cc_select_img.txt (keys) with cc_select_label.txt
(labels, line by line), found in the root or its annotations/ folder. --subset_list all trains on
noisy_train_key_list.txt; --subset_list FILE on another subset ('<key> <label>' lines, or bare keys
labelled by --subset_labels FILE or noisy_label_kv.txt). --fp_encoder classifier --fp_checkpoint
FILE uses a torchvision-layout classifier trained on Clothing1M as f_p.

Defaults follow the authors' train_Clothing1M.py: f_p is their "Centrality and Consistency"
classifier CC_net.pt (its 128-d projection; --fp_checkpoint PATH, default the published file, fetched
into --inputs_dir), 300 epochs (the cosine learning-rate horizon), batch 256, warm-up 1, k 20,
feature_dim 1024, and a class-balanced draw of 10,000 images per class, redrawn every epoch
(--per_class 10000; 0 trains on every image each epoch). Their retrieval weighs every sample of a
batch alike (--candidate_weights uniform).
"""
import utils.runs.startup  # noqa: F401  first, before torch loads: a Ctrl-C meanwhile ends in one line

from utils.data.clothing1m import cc_select_files, read_clothing1m
from utils.engine import main as run_script
from utils.recipes import IMPROVED, evaluation_batch, fixed_view, reads_images, retrieves_per_step
from utils.runs.cli import run_cli
from utils.runs.config import parse_config

# The authors' train_Clothing1M.py defaults (their commit 231e587); everything else: utils/runs/config.py.
DEFAULTS = dict(
    script='train_Clothing1M.py',
    dataset='clothing1m',
    noise_type='own',              # the dataset's own noisy labels
    nepoch=300,                    # the cosine's horizon too (--lr_horizon 0)
    batch_size=256,
    warmup_epochs=1,
    lr_horizon=0,
    eval_every=1,
    eval_from=0,                   # every epoch is evaluated, warm-up's too
    drop_last=True,                # their loader's drop_last: full batches only
    per_class=10000,               # a class-balanced draw of 10,000 per class, every epoch
    feature_dim=1024,
    k=20,
    candidate_weights='uniform',   # every sample of a batch weighs alike
    fp_encoder='CC',               # their "Centrality and Consistency" classifier CC_net.pt, its 128-d projection
    diff_encoder='resnet50_l',     # an ImageNet ResNet-50 and their two-layer head
)


# What --recipe sets, for each flag it governs that the command line leaves unset (utils/recipes.py).
RECIPES = {
    'authors': dict(                   # their train_Clothing1M.py
        diff_backbone='tuned',         # the ResNet-50 is fine-tuned on augmented views decoded every epoch
        freeze_diff_encoder=False,
        eval_bn='running',             # evaluated in eval mode
        fp_cache_view='clean',         # keys: f_p of the centre crops
        fp_train_view=lambda c: 'augmented' if reads_images(c) and not fixed_view(c) else 'cached',  # f_p
        per_step_retrieval=retrieves_per_step,  # re-encodes each augmented batch; its neighbours searched anew
        ema_decay=0.0,                 # their EMA is updated and never read
        eval_batch_size=evaluation_batch(),
    ),
    'improved': IMPROVED,
}


def dataset_args(g):
    g.add_argument('--clothing1m_root', default='./data/Clothing1M', help='folder of the annotation files and images/')
    g.add_argument('--subset_list', default='cc_select',
                   help="training subset: cc_select (the authors': cc_select_img.txt with cc_select_label.txt), "
                        "all (noisy_train_key_list.txt), or a file of '<key> <label>' lines or bare keys")
    g.add_argument('--subset_labels', default=None,
                   help='labels of a --subset_list file of bare keys, one per line in the same order '
                        '(default: noisy_label_kv.txt)')


def training_subset(cfg):
    """(key list, label file) of the training subset --subset_list names; (None, None): all."""
    if cfg.subset_list == 'cc_select':
        return cc_select_files(cfg.clothing1m_root, cfg.inputs_dir)
    if cfg.subset_list == 'all':
        return None, cfg.subset_labels
    return cfg.subset_list, cfg.subset_labels


def load_splits(cfg):
    return read_clothing1m(cfg.clothing1m_root, *training_subset(cfg))


def config(argv=None):
    return parse_config(__doc__, DEFAULTS, RECIPES, argv, dataset_args, kind='files')


def main(argv=None):
    return run_script(config(argv), load_splits)


if __name__ == '__main__':
    run_cli(main)
