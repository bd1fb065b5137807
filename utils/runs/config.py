"""A run's configuration: the flags every training script shares, resolved once, when they are parsed.

Each script passes its DEFAULTS table (what differs from COMMON_DEFAULTS) and its RECIPES table (the
authors' protocol and the improvements, utils/recipes.py). `parse_config` parses the command line,
fills every flag the recipe governs, checks every flag, and returns a frozen Config: what config.json,
every checkpoint and `--print_config` show is what the run uses, and nothing rewrites it later (a value
decided by the data, the k chosen on validation say, makes a new Config with `replace`).

The flag names and meanings of the authors' scripts are kept (`--noise_type`, `--nepoch`,
`--batch_size`, `--device`, `--gpu_devices`, `--num_workers`, `--warmup_epochs`, `--feature_dim`, `--k`,
`--ddim_n_step`, `--fp_encoder`, `--CLIP_type`, `--diff_encoder`).
"""
import argparse
import os
import sys

from model_diffusion import BETA_SCHEDULES
from utils.data.noise import names_a_file
from utils.diff_encoders import BACKBONES, DIFF_ENCODERS
from utils.encoders.clip import CLIP_TOWERS
from utils.encoders.factory import FP_ENCODERS
from utils.errors import SetupError
from utils.recipes import CUDA_GRAPH_MODES, IMPROVED_EMA_DECAY, RECIPES, cuda_graph_mode, resolve_recipe
from utils.retrieval import CANDIDATE_RULES, CANDIDATE_WEIGHTS
from utils.runs.checks import check_config
from utils.runs.cli import Parser
from utils.runtime.frozen_kernels import FROZEN_KERNELS

K_SELECT = ('vote', 'model')  # how --k_choices chooses k (utils/runs/k_trials.py)

# Defaults common to all datasets; a script's table overrides these.
COMMON_DEFAULTS = dict(
    nepoch=200, batch_size=200, device='auto', num_workers=4, warmup_epochs=20, feature_dim=256, k=10,
    ddim_n_step=10, fp_encoder='SimCLR', CLIP_type='ViT-L/14', diff_encoder='resnet18',
    seed=123, noise_seed=0, data_root='./data', out_dir='./runs', run_name=None, cache_dir='./cache',
    n_layers=3, lr=1e-3, lr_horizon=1000, grad_clip=1.0, eval_every=5, eval_from=None, beta_schedule='cosine', n_timesteps=1000,
    fp_checkpoint=None, clip_download_root=None, clip_tower='fused', precision='bf16',
    recipe='authors', fp_train_view=None,
    fp_cache_view=None, per_step_retrieval=None, eval_bn=None, freeze_diff_encoder=None, diff_backbone=None,
    eval_batch_size=None, encode_batch_size=512, resume=None, cifar_n_dir=None,
    download=True, n_samples=10, compile=False, cuda_graph=None, frozen_kernels='eager', checkpoint_every=1,
    fp_arch='resnet50',
    diff_encoder_weights='imagenet', image_size=224,
    per_class=0, drop_last=False, candidates='neighbours+own', candidate_weights='agreement',
    inputs_dir=None, dataset=None, k_choices=None, k_select='vote', k_trial_epochs=0, ema_decay=None,
    fp_conditioning=True, gpu_devices=None, print_config=False,
    script=None,  # no flag: the script whose defaults table this is (a run records it; --resume, predict.py check it)
)


class Config(argparse.Namespace):
    """A run's resolved flags, frozen: setting one raises. `replace(**changes)` gives a new Config."""
    __slots__ = ('_frozen',)

    def __setattr__(self, name, value):
        if getattr(self, '_frozen', False):
            raise AttributeError(f'the run\'s configuration is resolved and frozen; make a new one with '
                                 f'.replace({name}=...) instead of setting {name}')
        super().__setattr__(name, value)

    def freeze(self):
        object.__setattr__(self, '_frozen', True)
        return self

    def replace(self, **changes):
        return Config(**{**vars(self), **changes}).freeze()


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and names each flag's default once, where it has one and its
    help line does not already say it."""

    def _get_help_string(self, action):
        text = action.help or ''
        if action.default not in (None, argparse.SUPPRESS) and 'default' not in text and action.option_strings:
            text += ' (default: %(default)s)'
        return text


def _data_flags(g, kind):
    """Where the data and the noisy labels come from."""
    g.add_argument('--noise_type',
                   help='noise name (a published file such as cifar10-1-0.35, fetched; noisy_label/NAME.npy; '
                        '<dataset>-U-0.4, <name>_A_0.3, cifar10n-worse, ...) '
                        'or the path of a .npy file')
    g.add_argument('--noise_seed', type=int,
                   help='seed of generated i.i.d. noise (uniform/asymmetric)')
    if kind == 'memory':
        g.add_argument('--dataset', help="cifar10 or cifar100 (default: the noise name's prefix)")
        g.add_argument('--data_root', help='folder holding (or receiving) the dataset')
        g.add_argument('--download', action=argparse.BooleanOptionalAction,
                       help='download the dataset when it is not under --data_root')
        g.add_argument('--cifar_n_dir', help='folder holding the CIFAR-N .pt files')
    else:
        g.add_argument('--image_size', type=int, help='decode, resize and centre-crop images to this size')
    g.add_argument('--inputs_dir',
                   help='folder of the published noise files and encoders, fetched and verified on first use '
                        '(default $LRA_DIFFUSION_HOME, else ~/.cache/lra_diffusion)')


def _fp_flags(g, kind):
    """f_p: the frozen pre-trained encoder that retrieval searches in and the denoiser reads."""
    g.add_argument('--fp_encoder', choices=FP_ENCODERS,
                   help="frozen encoder f_p for retrieval and conditioning (CC: the authors' Clothing1M "
                        'classifier CC_net.pt; raw: flattened pixels; features: precomputed embeddings)')
    g.add_argument('--CLIP_type',
                   help='ViT-B/32, ViT-B/16, ViT-L/14, or the path of a local CLIP checkpoint')
    g.add_argument('--clip_tower', choices=CLIP_TOWERS,
                   help='how the CLIP image tower runs: fused (rebuilt for inference from the same weights: '
                        'bf16 weights held once on CUDA, batch-first attention; equal in float32, bf16 rounding '
                        "on CUDA) or clip (the clip package's own module under bf16 autocast, as before)")
    g.add_argument('--clip_download_root',
                   help='where the clip package keeps downloaded weights (default ~/.cache/clip)')
    g.add_argument('--fp_checkpoint',
                   help="f_p's file: a SimCLR checkpoint (default: the authors' SimCLR_128_<dataset>, fetched into "
                        "--inputs_dir), the CC classifier (default: the authors' CC_net.pt, fetched likewise), an "
                        '--fp_encoder classifier checkpoint, timm/OpenCLIP weights, or with --fp_encoder features an '
                        ".npz of float arrays train, val, test (rows in the dataset's order)")
    g.add_argument('--fp_model', help='--fp_encoder timm: any timm model name; open_clip: the architecture '
                   '(e.g. ViT-B-16-SigLIP)')
    g.add_argument('--fp_pretrained', help='--fp_encoder open_clip: the weights tag')
    if kind == 'files':
        g.add_argument('--fp_arch', help='architecture of --fp_encoder classifier')
    g.add_argument('--encode_batch_size', type=int, help='batch of the frozen encoders while features are extracted')


def _method_flags(g, kind):
    """Label retrieval, the denoiser with its diffusion encoder, and the label diffusion."""
    g.add_argument('--k', type=int, help='neighbours retrieved per sample')
    g.add_argument('--k_choices', type=int, nargs='+', metavar='K',
                   help='choose k among these on the clean validation split (replaces --k; the choice is logged)')
    g.add_argument('--k_select', choices=K_SELECT,
                   help="how --k_choices chooses: vote (how often the majority noisy label of a validation image's "
                        'k training neighbours is its label: one search, no training), or model (a short run per k, '
                        '--k_trial_epochs, the first epochs of this run; the k whose model is best on validation)')
    g.add_argument('--k_trial_epochs', type=int,
                   help='epochs of each --k_select model trial (0: a tenth of --nepoch, at least twice '
                        '--warmup_epochs), up to the run\'s next evaluation; the run goes on from the best trial')
    g.add_argument('--candidates', choices=CANDIDATE_RULES,
                   help="a sample's k+1 candidate labels: its k neighbours' plus its own (neighbours+own), or its "
                        "k+1 nearest neighbours' (neighbours; the authors' Food-101N); itself is its nearest. own: "
                        "its own noisy label alone, no retrieval (the paper's ablation)")
    g.add_argument('--candidate_weights', choices=CANDIDATE_WEIGHTS,
                   help='loss weight of a picked candidate: how many candidates agree with it (agreement), or '
                        "the same for every sample (uniform; the authors' Clothing1M and WebVision)")
    g.add_argument('--diff_encoder', choices=sorted(DIFF_ENCODERS),
                   help='diffusion encoder giving the image embedding x_e: a CIFAR-stem ResNet on the image, '
                        '"linear" (MLP on pixels), "fp_mlp" (MLP on the f_p features) or resnet*_l (an ImageNet '
                        'ResNet + the authors\' two-layer head; see --diff_backbone)')
    g.add_argument('--diff_encoder_weights',
                   help="backbone weights of the *_l diffusion encoders: imagenet (torchvision's first ImageNet "
                        "release, the authors' files; checked by SHA-256), random, or a path")
    g.add_argument('--feature_dim', type=int, help='width of the denoiser')
    g.add_argument('--n_layers', type=int,
                   help='time-gated layers of the denoiser (the paper: 3; x_e gates the first)')
    g.add_argument('--fp_conditioning', action=argparse.BooleanOptionalAction,
                   help="the denoiser's first layer reads f_p(x) beside y_t; --no-fp_conditioning: y_t alone (the "
                        "paper's ablation without the f_p conditioning; f_p still serves retrieval)")
    g.add_argument('--n_timesteps', type=int, help='diffusion steps T')
    g.add_argument('--beta_schedule', choices=sorted(BETA_SCHEDULES), help='noise schedule β_t of the label diffusion')


def _training_flags(g, kind):
    """The schedule, the draws and how the steps run."""
    g.add_argument('--nepoch', type=int, help='training epochs')
    g.add_argument('--batch_size', type=int, help='training batch size')
    g.add_argument('--warmup_epochs', type=int,
                   help='linear LR warm-up (its end is the default --eval_from)')
    g.add_argument('--lr', type=float, help='peak learning rate')
    g.add_argument('--lr_horizon', type=int,
                   help="epochs of the half-cosine decay (the authors' CIFAR: 1000, of which runs use --nepoch); "
                        '0: --nepoch')
    g.add_argument('--grad_clip', type=float, help='gradient-norm clip')
    g.add_argument('--drop_last', action=argparse.BooleanOptionalAction,
                   help="drop each epoch's last partial batch, as the authors' Food-101N, Clothing1M and WebVision "
                        "loaders do (their CIFAR split divides evenly); a run smaller than one batch keeps it")
    g.add_argument('--per_class', type=int,
                   help='train each epoch on N samples of every class, drawn afresh (the authors: 10000 on '
                        'Clothing1M, 500 on WebVision); 0: every sample')
    g.add_argument('--seed', type=int,
                   help='seed of the model, the training draws and the augmented training views (the augmented '
                        'f_p key view, --fp_cache_view augmented, is one view for every seed: the authors cached one)')
    g.add_argument('--precision', choices=('bf16', 'fp32'),
                   help='arithmetic of the image networks (f_p, ResNet diffusion encoders) on CUDA, and of the '
                        'shortlist of the per-step neighbour search (re-ranked in float32); the denoiser MLP, '
                        'features and optimiser stay float32')
    g.add_argument('--compile', action=argparse.BooleanOptionalAction,
                   help='torch.compile the denoiser training step (fewer kernel launches on a GPU)')
    g.add_argument('--frozen_kernels', choices=FROZEN_KERNELS,
                   help='how the frozen image networks of a step run (the SimCLR f_p re-encoding the augmented '
                        'batch, a frozen diffusion encoder): eager; fused (f_p\'s BatchNorms folded into its '
                        'convolutions, each convolution, bias, residual and ReLU one cuDNN call); compiled '
                        '(torch.compile of both). The same function to bf16 rounding (utils/runtime/frozen_kernels)')
    g.add_argument('--cuda_graph', choices=CUDA_GRAPH_MODES,
                   help='on one CUDA device, what replays from CUDA graphs (one launch instead of hundreds; the '
                        'same kernels, so results agree to float rounding): off, eval (each evaluation batch) or '
                        'all (each training step of --batch_size too; not under torchrun or with --compile, and '
                        'image files decoded per batch or an odd last batch step eagerly). Default: eval where the '
                        'step runs a frozen image network forward (the authors\' recipe: a graphed step measured '
                        'slower there), else all')


def _evaluation_flags(g, kind):
    """Model selection on the clean validation split, and the labels the run writes."""
    g.add_argument('--eval_every', type=int,
                   help='evaluate on the clean validation split every N epochs (0-based: 0, N, 2N, ...) from '
                        '--eval_from')
    g.add_argument('--eval_from', type=int, metavar='EPOCH',
                   help='the first epoch that may be evaluated (default: --warmup_epochs, the authors\' CIFAR '
                        'rule; their Food-101N, Clothing1M and WebVision scripts evaluate from epoch 0)')
    g.add_argument('--ddim_n_step', type=int, help='DDIM steps at inference')
    g.add_argument('--eval_batch_size', type=int,
                   help='evaluation batch (default: where --eval_bn is batch, the authors\' evaluation batch, '
                        '--batch_size or Food-101N\'s 512; else 2000)')
    g.add_argument('--n_samples', type=int,
                   help='stochastic DDIM samples per training image for the saved class probabilities '
                        '(train_probs.npy); 0 skips them')


def _recipe_flags(g, kind):
    """The authors' protocol or each improvement."""
    g.add_argument('--recipe', choices=RECIPES,
                   help="authors: the authors' protocol, their scripts' quirks included; improved: every improvement below at once. "
                        'Each flag below left unset follows the recipe (--print_config shows what it resolved to)')
    g.add_argument('--freeze_diff_encoder', action=argparse.BooleanOptionalAction,
                   help="keep the diffusion encoder at its initial weights (authors, CIFAR and Food-101N: the "
                        'optimiser holds the denoiser only)')
    g.add_argument('--diff_backbone', choices=BACKBONES,
                   help="the ResNet of a resnet*_l diffusion encoder: cached (frozen, its features computed once; "
                        "improved) or tuned (reads augmented images decoded every epoch and is fine-tuned, unless "
                        "--freeze_diff_encoder; the authors' Clothing1M, WebVision and, frozen, Food-101N)")
    g.add_argument('--eval_bn', choices=('batch', 'running'),
                   help="BatchNorm of the diffusion encoder at evaluation: batch statistics (authors, CIFAR and "
                        'Food-101N: the encoder never leaves training mode, so predictions depend on the evaluation '
                        "batch; on several --gpu_devices each device's share of it, as their nn.DataParallel) or "
                        'running statistics')
    g.add_argument('--fp_cache_view', choices=('augmented', 'clean'),
                   help='the view of each training image whose f_p features are cached as retrieval keys '
                        '(authors, CIFAR and Food-101N: one random crop + flip; improved: the clean image or '
                        'centre crop)')
    g.add_argument('--fp_train_view', choices=('cached', 'augmented'),
                   help='f_p input while training: the cached features, or the augmented batch re-encoded '
                        "every step (authors: SimCLR on CIFAR)")
    g.add_argument('--per_step_retrieval', action=argparse.BooleanOptionalAction,
                   help='retrieve the neighbours of each step\'s augmented query against the cached keys '
                        '(authors, with --fp_train_view augmented) instead of the cached neighbour table')
    g.add_argument('--ema_decay', type=float,
                   help='evaluate (and save for prediction) an exponential moving average of the trained weights '
                        'with this decay per step (improved: %s); 0: the trained weights themselves (authors)'
                        % IMPROVED_EMA_DECAY)


def _run_flags(g, kind):
    """Where the run's folder and caches lie, and what it runs on."""
    g.add_argument('--out_dir', help='parent folder of run folders')
    g.add_argument('--run_name', help='run folder name (default: derived from flags)')
    g.add_argument('--cache_dir', help='feature and neighbour caches')
    g.add_argument('--resume', metavar='RUN_DIR',
                   help='continue the run in RUN_DIR from its last checkpoint')
    g.add_argument('--checkpoint_every', type=int,
                   help='write last.pt every N epochs (1: an interrupted run loses no finished epoch)')
    g.add_argument('--device', help='auto, cpu, cuda or cuda:N')
    g.add_argument('--gpu_devices', type=int, nargs='+', metavar='ID',
                   help="CUDA device ids (the authors' flag): one id runs there (--device cuda:ID); several run "
                        'one process per device, as torchrun would, training data-parallel (rank 0 evaluates and '
                        'writes; a signal stops them all after the same epoch)')
    g.add_argument('--num_workers', type=int,
                   help='DataLoader workers decoding image files (in-memory datasets need none: accepted there for '
                        "the authors' command lines)")
    g.add_argument('--print_config', action='store_true',
                   help='print the resolved configuration (every flag, and where its value came from) and exit')
    g.add_argument('--debug', action='store_true', help='show the traceback of a refusal, not only its one line')


FLAG_GROUPS = (  # the --help sections, in order
    ('data and noise', _data_flags),
    ('f_p: the frozen pre-trained encoder', _fp_flags),
    ('method: retrieval, the denoiser and its diffusion encoder, the label diffusion', _method_flags),
    ('training', _training_flags),
    ('evaluation', _evaluation_flags),
    ("recipe: the authors' protocol (the default) or each improvement", _recipe_flags),
    ('outputs and runs', _run_flags),
)


def build_parser(description, defaults, dataset_args=None, kind='memory'):
    """The flags that apply to a script, with its defaults: COMMON_DEFAULTS overridden by the
    script's table, applied once. kind 'memory' (CIFAR, digits: images held as tensors) or 'files'
    (image-file datasets) decides which data flags exist; `dataset_args(group)` adds the script's own."""
    p = Parser(description=description, formatter_class=HelpFormatter)
    for title, add in FLAG_GROUPS:
        add(p.add_argument_group(title), kind)
    if dataset_args is not None:
        dataset_args(p.add_argument_group('dataset'))
    apply_defaults(p, {**COMMON_DEFAULTS, **defaults})
    return p


def apply_defaults(parser, defaults):
    """Every default in one place: the tables, set on the parser once. A table entry naming no flag
    still sets the attribute (code reads it), but is an error when it is a typo of nothing at all."""
    known = {a.dest for a in parser._actions} | set(COMMON_DEFAULTS)
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise ValueError(f'defaults for flags that do not exist: {", ".join(unknown)}')
    parser.set_defaults(**defaults)


def parse_config(description, defaults, recipes, argv=None, dataset_args=None, kind='memory'):
    """The script's flags parsed, the recipe resolved (`recipes`: the script's RECIPES table), every flag
    checked, frozen. With --print_config the resolved table is printed and the process exits."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(description, defaults, dataset_args, kind)
    cfg = parser.parse_args(argv, namespace=Config())
    cfg.argv = argv  # the arguments as given: what each process of several --gpu_devices is started with
    if cfg.print_config and cfg.resume:  # a resumed run's values are in its checkpoint, not in this table
        raise SetupError(f'--print_config shows the flags a new run resolves; the run --resume {cfg.resume} goes on '
                         f'with those it recorded: read {os.path.join(cfg.resume, "config.json")}, or drop --resume')
    cfg.command_line_flags = given_flags(build_parser(description, defaults, dataset_args, kind), argv)
    cfg.script_flags = sorted(a.dest for a in parser._actions if a.option_strings and a.dest != 'help')
    # the script's own flags, which say where its dataset lies (predict.py takes them from its command line)
    cfg.dataset_flags = sorted(a.dest for group in parser._action_groups if group.title == 'dataset'
                               for a in group._group_actions)
    resolve_defaults(cfg, recipes, kind)
    check_config(cfg)
    if not cfg.resume:  # a resumed run keeps what it recorded (its fingerprints were taken of those spellings)
        absolute_data_paths(cfg)
    cfg.freeze()
    if cfg.print_config:
        print(config_table(cfg, parser, defaults))
        sys.exit(0)
    return cfg


def resolve_defaults(cfg, recipes, kind='memory'):
    """The flags left unset that a new run resolves: the recipe's (`recipes`: the script's RECIPES table), the
    CUDA graph mode and --eval_from. A resumed run takes its recipe's values from its checkpoint."""
    if not cfg.resume:
        cfg.recipe_filled = resolve_recipe(cfg, recipes, kind)
        cfg.cuda_graph = cuda_graph_mode(cfg)  # after the recipe: it depends on the networks the step runs
    if cfg.eval_from is None:
        cfg.eval_from = cfg.warmup_epochs
    return cfg


# flags naming a dataset's list files, which a resume from another folder names by another path: what they
# hold is checked by the resume's fingerprints (utils/runs/folders.py: dataset_fingerprints, input_fingerprints)
DATA_FILE_FLAGS = ('train', 'val', 'test', 'classes', 'imagenet_val_labels', 'subset_list', 'subset_labels')
# flags naming where a run's inputs lie (every *_root flag too), and the keywords some take instead of a path
DATA_PATH_FLAGS = ('data_root', 'cifar_n_dir', 'inputs_dir', 'clip_download_root', 'noise_type', 'fp_checkpoint',
                   *DATA_FILE_FLAGS)
PATH_KEYWORDS = {'subset_list': ('cc_select', 'all')}


def names_a_path(flag):
    return flag in DATA_PATH_FLAGS or flag.endswith('_root')


def absolute_data_paths(cfg):
    """A new run records where its inputs lie as absolute paths (checked first in the spelling given): a
    relative one would mean another folder to predict.py or a resume typed elsewhere, and the ranking CSV
    would name its images relative to a folder it does not record. --noise_type and --fp_checkpoint only
    where they name a file (not a noise or hub model name)."""
    for name, value in list(vars(cfg).items()):
        if not (names_a_path(name) and isinstance(value, str) and value) or value in PATH_KEYWORDS.get(name, ()):
            continue
        if (name == 'noise_type' and not names_a_file(value)) or (name == 'fp_checkpoint' and not os.path.isfile(value)):
            continue
        setattr(cfg, name, os.path.abspath(value))


def value_source(cfg, name, defaults):
    """Where a flag's value came from: the command line, the recipe, the script's table or the common one."""
    if name in cfg.command_line_flags:
        return 'command line'
    if name in getattr(cfg, 'recipe_filled', ()):
        return f'recipe {cfg.recipe}'
    return 'script' if name in defaults else 'default'


def config_table(cfg, parser, defaults):
    """The resolved configuration, one flag a line under its --help group, with where its value came from."""
    lines = [f'# {cfg.script or "this script"}: the resolved configuration (--print_config)']
    for group in parser._action_groups:
        names = [a.dest for a in group._group_actions if a.option_strings and a.dest not in ('help', 'print_config')]
        if not names:
            continue
        lines.append(f'\n[{group.title}]')
        width = max(len(n) for n in names)
        for name in names:
            lines.append(f'  {name:<{width}}  {getattr(cfg, name)!r:<24}  ({value_source(cfg, name, defaults)})')
    return '\n'.join(lines)


def recorded_config(cfg):
    """The configuration a run folder records: the flags of its own script (and the values its
    defaults table adds), not the defaults of flags other datasets' scripts have."""
    own = set(getattr(cfg, 'script_flags', ())) or set(vars(cfg))
    return {k: v for k, v in vars(cfg).items()
            if (k in own or k not in COMMON_DEFAULTS) and k not in ('print_config', 'recipe_filled')}


def given_flags(parser, argv):
    """The flags the command line gives (a resumed run refuses those that would change it)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    parser._defaults.clear()  # the defaults tables, set once on the parser
    return sorted(vars(parser.parse_args(argv)))


def _flag_actions():
    """dest → argparse action of every flag the common parsers have (both kinds of dataset)."""
    actions = {}
    for kind in ('memory', 'files'):
        for action in build_parser('', {}, kind=kind)._actions:
            if action.option_strings and action.dest != 'help':
                actions.setdefault(action.dest, action)
    return actions


def could_give(action, value):
    """Whether parsing a command line could have given `value` to the flag of `action`."""
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):  # switches
        return isinstance(value, bool)
    items = value if action.nargs in ('+', '*') else [value]
    if action.nargs in ('+', '*') and not isinstance(value, list):
        return False
    kind = action.type or str
    for item in items:
        if kind is int and not (isinstance(item, int) and not isinstance(item, bool)):
            return False
        if kind is float and not (isinstance(item, (int, float)) and not isinstance(item, bool)):
            return False
        if kind is str and not isinstance(item, str):
            return False
        if action.choices is not None and item not in action.choices:
            return False
    return True


def saved_flag_problems(saved):
    """Values a run recorded (a checkpoint's config) that no command line could have given their flag: a
    damaged or edited file, refused before it fails with a traceback. None is a value a run may record
    where the flag's common default is None (a default the recipe resolves); flags of one script only are
    not checked."""
    actions = _flag_actions()
    never_none = [name for name, value in saved.items()  # flags every run resolves to a value
                  if value is None and COMMON_DEFAULTS.get(name) is not None]
    return [f'--{name} None is not a value of the flag' for name in never_none] + \
        [f'--{name} {value!r} is not a value of the flag' for name, value in saved.items()
         if name in actions and value is not None and not could_give(actions[name], value)
         and not (name in RECORDED_SWITCHES and isinstance(value, bool))]


# flags whose runs recorded True or False before they took a value (utils/recipes.cuda_graph_mode reads them)
RECORDED_SWITCHES = ('cuda_graph',)
