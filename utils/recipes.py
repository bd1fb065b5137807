"""Training recipes: the authors' protocol (the default) and the package's improvements.

Every behaviour that differs between the two is its own flag whose default is None, meaning
"as --recipe says". `resolve_recipe` fills those in once, before any work, so the resolved values
are what config.json and every checkpoint record; a flag given on the command line always wins.

| flag                   | authors (default)                               | improved          |
|------------------------|-------------------------------------------------|-------------------|
| --freeze_diff_encoder  | in-memory datasets, Food-101N: yes (the         | no (trained)      |
|                        | authors' optimiser holds the denoiser only)     |                   |
| --eval_bn              | in-memory datasets, Food-101N: batch (their     | running           |
|                        | encoder never leaves training mode)             |                   |
| --eval_batch_size      | where --eval_bn is batch: --batch_size, their   | 2000              |
|                        | Food-101N test loader's 512                     |                   |
| --fp_cache_view        | in-memory datasets, Food-101N: augmented (one   | clean             |
|                        | random crop + flip view, cached once)           |                   |
| --fp_train_view        | SimCLR on in-memory datasets: augmented         | cached            |
|                        | (re-encoded every step), otherwise cached       |                   |
| --per_step_retrieval   | wherever --fp_train_view is augmented           | no (cached table) |
| --diff_backbone        | Clothing1M, WebVision, Food-101N: tuned (the    | cached (frozen,   |
|                        | ResNet-50 reads each step's augmented images;   | features computed |
|                        | Clothing1M, WebVision: fine-tuned, and f_p      | once)             |
|                        | re-encodes the batch, retrieved every step)     |                   |
| --ema_decay            | 0 (the trained weights are evaluated)           | 0.999 (a moving   |
|                        |                                                 | average of them)  |
| gradient clipping      | the denoiser and the diffusion encoder each     | one clip over all |
|                        | clipped on their own (no flag)                  | trained weights   |

On Clothing1M and WebVision the authors evaluate in eval mode (running statistics). Their Food-101N
encoder is never optimised nor switched to eval mode: its ResNet-50 (ImageNet weights, random head)
reads each step's augmented crops and normalises with batch statistics, at evaluation too; its f_p
cache, the retrieval keys, holds one random crop + flip of each image (Clothing1M's and WebVision's
hold the centre crops).
"""
from utils.diff_encoders import diff_encoder_input
from utils.errors import SetupError

RECIPES = ('authors', 'improved')
# every flag --recipe governs (resolve_recipe fills those left unset)
RECIPE_FLAGS = ('diff_backbone', 'freeze_diff_encoder', 'eval_bn', 'fp_cache_view', 'fp_train_view', 'ema_decay',
                'per_step_retrieval', 'eval_batch_size')
IMPROVED_EVAL_BATCH = 2000
IMPROVED_EMA_DECAY = 0.999  # utils/averaging.py
# their ResNet-50 diffusion encoder reads each step's augmented images (it is optimised on the first
# two, whose step also re-encodes the batch with f_p; Food-101N's optimiser holds the denoiser only)
STREAMED_BY_THE_AUTHORS = ('clothing1m', 'webvision', 'food101n')
FROZEN_BY_THE_AUTHORS = ('food101n',)  # never optimised, never in eval mode
AUTHORS_EVAL_BATCH = {'food101n': 512}  # their test loader's; elsewhere their --batch_size
AUGMENTED_KEYS_BY_THE_AUTHORS = ('food101n',)  # their f_p cache of the training images: one random crop + flip


def _authors(cfg, in_memory, dataset):
    fixed_view = cfg.fp_encoder == 'features'  # a features file has one fixed view
    frozen = in_memory or dataset in FROZEN_BY_THE_AUTHORS
    tuned = cfg.diff_backbone or ('tuned' if dataset in STREAMED_BY_THE_AUTHORS else 'cached')
    # the authors re-encode the augmented batch with f_p where a step has one: SimCLR on CIFAR, and
    # the image-file datasets whose images stream through a trained encoder
    streams = not in_memory and not frozen and diff_encoder_input(cfg.diff_encoder, tuned) == 'image'
    augmented_fp = not fixed_view and ((in_memory and cfg.fp_encoder == 'SimCLR') or streams)
    return {
        'diff_backbone': tuned,
        'freeze_diff_encoder': frozen,
        'eval_bn': 'batch' if frozen else 'running',
        'fp_cache_view': 'augmented' if (in_memory or dataset in AUGMENTED_KEYS_BY_THE_AUTHORS) and not fixed_view
        else 'clean',
        'fp_train_view': 'augmented' if augmented_fp else 'cached',
        'ema_decay': 0.0,
    }


def _improved(cfg, in_memory, dataset):
    return {'diff_backbone': 'cached', 'freeze_diff_encoder': False, 'eval_bn': 'running', 'fp_cache_view': 'clean',
            'fp_train_view': 'cached', 'ema_decay': IMPROVED_EMA_DECAY}


def resolve_recipe(cfg, in_memory, dataset=None):
    """Fill every recipe-governed flag left at None; refuse combinations that cannot run."""
    if cfg.recipe not in RECIPES:
        raise SetupError(f'unknown --recipe {cfg.recipe!r}; choose {" or ".join(RECIPES)}')
    chosen = (_authors if cfg.recipe == 'authors' else _improved)(cfg, in_memory, dataset)
    for name, value in chosen.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
    if cfg.per_step_retrieval is None:
        cfg.per_step_retrieval = cfg.recipe == 'authors' and cfg.fp_train_view == 'augmented'
    if cfg.eval_batch_size is None:
        # with batch statistics the prediction depends on the batch: evaluate in the authors' batches
        authors_batch = AUTHORS_EVAL_BATCH.get(dataset, cfg.batch_size)
        cfg.eval_batch_size = authors_batch if cfg.eval_bn == 'batch' else IMPROVED_EVAL_BATCH
    if cfg.fp_encoder == 'features' and 'augmented' in (cfg.fp_train_view, cfg.fp_cache_view):
        raise SetupError('--fp_encoder features reads fixed embeddings and cannot encode an augmented view: use '
                         '--fp_train_view cached --fp_cache_view clean')
    if not in_memory and cfg.fp_train_view == 'augmented' and diff_encoder_input(cfg.diff_encoder,
                                                                                cfg.diff_backbone) != 'image':
        raise SetupError('--fp_train_view augmented re-encodes the augmented images of each step, which an '
                         'image-file dataset decodes only for a diffusion encoder that reads images: add '
                         '--diff_backbone tuned (resnet*_l), or use --fp_train_view cached')
    if cfg.per_step_retrieval and cfg.fp_train_view != 'augmented':
        raise SetupError('--per_step_retrieval searches with the augmented query of each step; with '
                         '--fp_train_view cached the query is the cached key itself and the cached neighbour '
                         'table gives the same neighbours: drop --per_step_retrieval')
    return cfg
