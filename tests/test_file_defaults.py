"""Each image-file script's defaults are the authors' script's (puar-playground/LRA-diffusion @ 231e587)."""
import pytest

import train_Clothing1M
import train_Food101N
import train_WebVision
from utils.runs.config import build_parser

# Read off the authors' scripts: their argparse defaults, and the values hard-coded in their training
# loops (the adjust_learning_rate call: peak 1e-3, warm-up and cosine horizon; the balanced dataset's
# cls_size; an evaluation after every epoch, warm-up's too).
AUTHORS = {
    train_Clothing1M: dict(nepoch=300, batch_size=256, warmup_epochs=1, feature_dim=1024, k=20, ddim_n_step=10,
                           diff_encoder='resnet50_l', fp_encoder='CC', lr=1e-3, lr_horizon=0,  # n_epochs=n_epochs
                           per_class=10000, candidates='neighbours+own', candidate_weights='uniform', seed=123,
                           subset_list='cc_select', eval_every=1, eval_from=0, drop_last=True),
    train_WebVision: dict(nepoch=300, batch_size=256, warmup_epochs=1, feature_dim=1024, k=50, ddim_n_step=10,
                          diff_encoder='resnet50_l', fp_encoder='CLIP', CLIP_type='ViT-L/14', lr=1e-3,
                          lr_horizon=0,  # n_epochs=n_epochs
                          per_class=500, candidates='neighbours+own', candidate_weights='uniform', seed=123,
                          eval_every=1, eval_from=0, drop_last=True),
    # train_Food101N.py's schedule is hard-coded: warmup_epochs=10, n_epochs=200 (its --warmup_epochs
    # 1 is never read)
    train_Food101N: dict(nepoch=100, batch_size=256, warmup_epochs=10, feature_dim=1024, k=10, ddim_n_step=10,
                         diff_encoder='resnet50_l', fp_encoder='CLIP', CLIP_type='ViT-L/14', lr=1e-3, lr_horizon=200,
                         per_class=0, candidates='neighbours', candidate_weights='agreement', seed=123,
                         eval_every=1, eval_from=0, drop_last=True),
}


@pytest.mark.parametrize('script', list(AUTHORS), ids=lambda s: s.__name__)
def test_parser_defaults_are_the_authors(script):
    parsed = vars(build_parser(script.__doc__, script.DEFAULTS, script.dataset_args, 'files').parse_args([]))
    assert {name: parsed[name] for name in AUTHORS[script]} == AUTHORS[script]
