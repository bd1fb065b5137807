"""Training recipes: the authors' protocol (the default) and the package's improvements.

Every behaviour that differs between the two is its own flag whose default is None, meaning
"as --recipe says". `resolve_recipe` fills those in once, before any work, so the resolved values
are what config.json and every checkpoint record; a flag given on the command line always wins.

| flag                   | authors (default)                               | improved          |
|------------------------|-------------------------------------------------|-------------------|
| --freeze_diff_encoder  | in-memory datasets: yes (the authors' CIFAR     | no (trained)      |
|                        | optimiser holds the denoiser only)              |                   |
| --eval_bn              | in-memory datasets: batch (their CIFAR encoder  | running           |
|                        | never leaves training mode)                     |                   |
| --eval_batch_size      | --batch_size where --eval_bn is batch           | 2000              |
| --fp_cache_view        | in-memory datasets: augmented (one random       | clean             |
|                        | crop + flip view, cached once)                  |                   |
| --fp_train_view        | SimCLR on in-memory datasets: augmented         | cached            |
|                        | (re-encoded every step), otherwise cached       |                   |
| --per_step_retrieval   | wherever --fp_train_view is augmented           | no (cached table) |

Image-file datasets (Food-101N, Clothing1M, WebVision) train on cached features of the clean view
in both recipes; their authors fine-tuned the diffusion encoder and evaluated it in eval mode.
"""
from utils.runtime import SetupError

RECIPES = ('authors', 'improved')
IMPROVED_EVAL_BATCH = 2000


def _authors(cfg, in_memory):
    augmented_fp = in_memory and cfg.fp_encoder == 'SimCLR'
    encodes_images = in_memory and cfg.fp_encoder != 'features'  # a features file has one fixed view
    return {
        'freeze_diff_encoder': in_memory,
        'eval_bn': 'batch' if in_memory else 'running',
        'fp_cache_view': 'augmented' if encodes_images else 'clean',
        'fp_train_view': 'augmented' if augmented_fp else 'cached',
    }


def _improved(cfg, in_memory):
    return {'freeze_diff_encoder': False, 'eval_bn': 'running', 'fp_cache_view': 'clean',
            'fp_train_view': 'cached'}


def resolve_recipe(cfg, in_memory):
    """Fill every recipe-governed flag left at None; refuse combinations that cannot run."""
    if cfg.recipe not in RECIPES:
        raise SetupError(f'unknown --recipe {cfg.recipe!r}; choose {" or ".join(RECIPES)}')
    chosen = (_authors if cfg.recipe == 'authors' else _improved)(cfg, in_memory)
    for name, value in chosen.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
    if cfg.per_step_retrieval is None:
        cfg.per_step_retrieval = cfg.recipe == 'authors' and cfg.fp_train_view == 'augmented'
    if cfg.eval_batch_size is None:
        # with batch statistics the prediction depends on the batch: evaluate in the authors' batches
        cfg.eval_batch_size = cfg.batch_size if cfg.eval_bn == 'batch' else IMPROVED_EVAL_BATCH
    if cfg.fp_encoder == 'features' and 'augmented' in (cfg.fp_train_view, cfg.fp_cache_view):
        raise SetupError('--fp_encoder features reads fixed embeddings and cannot encode an augmented view: use '
                         '--fp_train_view cached --fp_cache_view clean')
    if not in_memory and 'augmented' in (cfg.fp_train_view, cfg.fp_cache_view):
        raise SetupError('augmented f_p views re-encode image tensors held in memory; this dataset is read '
                         'from files and trains on cached features of the clean view: use '
                         '--fp_train_view cached --fp_cache_view clean')
    if cfg.per_step_retrieval and cfg.fp_train_view != 'augmented':
        raise SetupError('--per_step_retrieval searches with the augmented query of each step; with '
                         '--fp_train_view cached the query is the cached key itself and the cached neighbour '
                         'table gives the same neighbours: drop --per_step_retrieval')
    return cfg
