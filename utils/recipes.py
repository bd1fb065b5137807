"""Training recipes: the authors' protocol (the default) and the package's improvements.

Every behaviour the two differ in is its own flag whose default is None, meaning "as --recipe says".
Each training script holds its RECIPES table: for 'authors' and 'improved', the value of every such
flag, or a function of the run's other flags where the authors' scripts made it depend on them (their
CIFAR script re-encodes each augmented batch with f_p only on the SimCLR path, say). The dataset's own
quirks live in its script's table, where a researcher reads them beside its defaults.

`resolve_recipe` fills the flags the command line left unset, in RECIPE_FLAGS order (a function may
read the flags before it), when the flags are parsed: config.json, every checkpoint and --print_config
show the values the run uses. A flag given on the command line always wins. Gradient clipping has no
flag: under 'authors' the denoiser and the diffusion encoder are clipped each on its own, as their
scripts do; otherwise all trained weights together (utils/trainer.clip_groups).
"""
from utils.diff_encoders import diff_encoder_input
from utils.errors import SetupError

RECIPES = ('authors', 'improved')
# every flag --recipe governs, in the order they are resolved
RECIPE_FLAGS = ('diff_backbone', 'freeze_diff_encoder', 'eval_bn', 'fp_cache_view', 'fp_train_view',
                'per_step_retrieval', 'ema_decay', 'eval_batch_size')
IMPROVED_EVAL_BATCH = 2000
IMPROVED_EMA_DECAY = 0.999  # utils/averaging.py


def evaluation_batch(batch_statistics_batch=None):
    """--eval_batch_size left unset: with batch statistics at evaluation (--eval_bn batch) the batch
    decides the predictions, so the authors' evaluation batch (`batch_statistics_batch`, else their
    --batch_size); with running statistics any batch gives the same labels."""
    return lambda c: (batch_statistics_batch or c.batch_size) if c.eval_bn == 'batch' else IMPROVED_EVAL_BATCH


def fixed_view(c):
    """A features file (--fp_encoder features) holds one fixed view of each image: nothing to augment."""
    return c.fp_encoder == 'features'


def reads_images(c):
    """The diffusion encoder reads (augmented) pixels rather than features."""
    return diff_encoder_input(c.diff_encoder, c.diff_backbone) == 'image'


# --cuda_graph: what replays from CUDA graphs (utils/runtime/graphs.py)
CUDA_GRAPH_MODES = ('off', 'eval', 'all')


def cuda_graph_mode(c):
    """--cuda_graph as the run uses it. Left unset: the evaluation batches always ('eval'), the training
    step too ('all') except where the step runs a frozen image network forward (the authors' recipe: the
    untrained ResNet diffusion encoder over each batch's pixels, f_p re-encoding the augmented views). On
    one H200 the graphed step was 0.80-0.93x the eager one there and 1.08-1.15x where the step trains the
    diffusion encoder (docs/RESULTS.md); why is not profiled yet. Runs recorded before the modes existed
    hold True (graphs on) or False."""
    if c.cuda_graph in CUDA_GRAPH_MODES:
        return c.cuda_graph
    if c.cuda_graph is False:
        return 'off'
    frozen_image_network = (c.freeze_diff_encoder and reads_images(c)) or c.fp_train_view == 'augmented'
    return 'eval' if frozen_image_network else 'all'


def retrieves_per_step(c):
    """The authors search the neighbours of each step's augmented query wherever f_p re-encodes the batch."""
    return c.fp_train_view == 'augmented'


# The improvements, the same for every dataset.
IMPROVED = dict(
    diff_backbone='cached',            # a resnet*_l backbone frozen, its features computed once
    freeze_diff_encoder=False,         # the diffusion encoder is trained with the denoiser
    eval_bn='running',                 # a prediction depends on its image alone
    fp_cache_view='clean',             # retrieval keys: f_p of the clean images (centre crops)
    fp_train_view='cached',            # the cached features: f_p runs once
    per_step_retrieval=False,          # the cached neighbour table
    ema_decay=IMPROVED_EMA_DECAY,      # a moving average of the weights is evaluated
    eval_batch_size=evaluation_batch(),
)


def resolve_recipe(cfg, recipes, kind='memory'):
    """Fill every recipe-governed flag left at None from `recipes[cfg.recipe]` (the script's table);
    refuse combinations that cannot run. Returns the names it filled. kind: 'memory' (images held as
    tensors) or 'files' (image files decoded as read)."""
    if cfg.recipe not in recipes:
        raise SetupError(f'unknown --recipe {cfg.recipe!r}; choose {" or ".join(recipes)}')
    table = recipes[cfg.recipe]
    missing = sorted(set(RECIPE_FLAGS) - set(table))
    if missing:
        raise ValueError(f'the {cfg.recipe} recipe does not say {", ".join(missing)}')
    filled = []
    for name in RECIPE_FLAGS:
        if getattr(cfg, name) is None:
            value = table[name]
            setattr(cfg, name, value(cfg) if callable(value) else value)
            filled.append(name)
    if fixed_view(cfg) and 'augmented' in (cfg.fp_train_view, cfg.fp_cache_view):
        raise SetupError('--fp_encoder features reads fixed embeddings and cannot encode an augmented view: use '
                         '--fp_train_view cached --fp_cache_view clean')
    if kind == 'files' and cfg.fp_train_view == 'augmented' and not reads_images(cfg):
        raise SetupError('--fp_train_view augmented re-encodes the augmented images of each step, which an '
                         'image-file dataset decodes only for a diffusion encoder that reads images: add '
                         '--diff_backbone tuned (resnet*_l), or use --fp_train_view cached')
    if cfg.per_step_retrieval and cfg.fp_train_view != 'augmented':
        raise SetupError('--per_step_retrieval searches with the augmented query of each step; with '
                         '--fp_train_view cached the query is the cached key itself and the cached neighbour '
                         'table gives the same neighbours: drop --per_step_retrieval')
    return filled
