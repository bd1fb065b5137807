"""Command-line flags shared by every training script.

Each script passes its own defaults table; the flag names and meanings of the authors' scripts are
kept (`--noise_type`, `--nepoch`, `--batch_size`, `--device`, `--num_workers`, `--warmup_epochs`,
`--feature_dim`, `--k`, `--ddim_n_step`, `--fp_encoder`, `--CLIP_type`, `--diff_encoder`).
"""
import argparse

from model_diffusion import BETA_SCHEDULES
from utils.encoders import FP_ENCODERS
from utils.x_encoders import X_ENCODERS

# Defaults common to all datasets; a script's table overrides these.
COMMON_DEFAULTS = dict(
    nepoch=200, batch_size=200, device='auto', num_workers=4, warmup_epochs=20, feature_dim=256, k=10,
    ddim_n_step=10, fp_encoder='SimCLR', CLIP_type='ViT-L/14', diff_encoder='resnet18',
    seed=123, noise_seed=0, data_root='./data', out_dir='./runs', run_name=None, cache_dir='./cache',
    lr=1e-3, lr_horizon=1000, grad_clip=1.0, eval_every=5, beta_schedule='cosine', n_timesteps=1000,
    fp_checkpoint=None, clip_download_root=None, precision='bf16', fp_train_view='auto',
    freeze_diff_encoder=False, eval_batch_size=2000, encode_batch_size=512, resume=None, cifar_n_dir=None,
    download=True, n_samples=10, compile=False, checkpoint_every=1, fp_arch='resnet50',
    diff_encoder_weights='imagenet', image_size=224, predict=None, predict_split='test', predict_folder=None,
)


# Defaults the image-file scripts (Food-101N, Clothing1M, WebVision) share: CLIP ViT-L/14 f_p, a
# frozen ImageNet ResNet-50 diffusion encoder on cached features, a wider denoiser.
IMAGE_FILE_DEFAULTS = dict(
    fp_encoder='CLIP', CLIP_type='ViT-L/14', diff_encoder='resnet50_l', feature_dim=1024,
    nepoch=100, batch_size=256, warmup_epochs=5, eval_every=1, lr_horizon=100,
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser(description, defaults, dataset_args=None):
    """The shared flags with the script's defaults; `dataset_args(parser)` adds the script's own."""
    d = {**COMMON_DEFAULTS, **defaults}
    p = argparse.ArgumentParser(description=description,
                                formatter_class=_HelpFormatter)
    g = p.add_argument_group('data and noise')
    g.add_argument('--noise_type', default=d['noise_type'],
                   help='noise name (noisy_label/NAME.npy, <dataset>-U-0.4, <name>_A_0.3, cifar10n-worse, ...) '
                        'or the path of a .npy file')
    g.add_argument('--dataset', default=d.get('dataset'),
                   help='dataset of the in-memory scripts (cifar10, cifar100); default: the noise name\'s prefix')
    g.add_argument('--data_root', default=d['data_root'], help='folder holding (or receiving) the dataset')
    g.add_argument('--download', default=d['download'], action=argparse.BooleanOptionalAction,
                   help='download the dataset when it is not under --data_root')
    g.add_argument('--noise_seed', type=int, default=d['noise_seed'],
                   help='seed of generated i.i.d. noise (uniform/asymmetric)')
    g.add_argument('--cifar_n_dir', default=d['cifar_n_dir'], help='folder holding the CIFAR-N .pt files')
    g = p.add_argument_group('encoders')
    g.add_argument('--fp_encoder', default=d['fp_encoder'], choices=FP_ENCODERS,
                   help='frozen encoder f_p for retrieval and conditioning (raw: flattened pixels)')
    g.add_argument('--CLIP_type', default=d['CLIP_type'],
                   help='ViT-B/32, ViT-B/16, ViT-L/14, or the path of a local CLIP checkpoint')
    g.add_argument('--fp_checkpoint', default=d['fp_checkpoint'],
                   help='SimCLR checkpoint (default: model/SimCLR_128_<dataset>.pt)')
    g.add_argument('--fp_arch', default=d['fp_arch'], help='architecture of --fp_encoder classifier')
    g.add_argument('--diff_encoder_weights', default=d['diff_encoder_weights'],
                   help="backbone weights of the *_l diffusion encoders: imagenet (torchvision's), random, or a path")
    g.add_argument('--image_size', type=int, default=d['image_size'],
                   help='image-file datasets: decode, resize and centre-crop to this size')
    g.add_argument('--clip_download_root', default=d['clip_download_root'],
                   help='where the clip package keeps downloaded weights (default ~/.cache/clip)')
    g.add_argument('--diff_encoder', default=d['diff_encoder'], choices=sorted(X_ENCODERS),
                   help='diffusion encoder giving the image embedding x_e: a CIFAR-stem ResNet on the image, '
                        '"linear" (MLP on pixels), "fp_mlp" (MLP on the f_p features) or resnet*_l (frozen '
                        'ImageNet ResNet features, cached, + a linear layer)')
    g.add_argument('--freeze_diff_encoder', default=d['freeze_diff_encoder'],
                   action=argparse.BooleanOptionalAction,
                   help="keep the diffusion encoder at its initial weights, as the authors' CIFAR code did")
    g.add_argument('--fp_train_view', default=d['fp_train_view'], choices=('auto', 'cached', 'augmented'),
                   help='f_p input while training: features of the un-augmented image (cached), or of the '
                        "augmented batch re-encoded each step; auto follows the authors (SimCLR: augmented, "
                        'others: cached)')
    g.add_argument('--precision', default=d['precision'], choices=('bf16', 'fp32'),
                   help='arithmetic of the image networks (f_p, ResNet diffusion encoders) on CUDA; the '
                        'denoiser MLP, features and optimiser stay float32')
    g = p.add_argument_group('model and training')
    g.add_argument('--nepoch', type=int, default=d['nepoch'], help='training epochs')
    g.add_argument('--batch_size', type=int, default=d['batch_size'])
    g.add_argument('--warmup_epochs', type=int, default=d['warmup_epochs'],
                   help='linear LR warm-up; evaluation starts after it')
    g.add_argument('--lr', type=float, default=d['lr'], help='peak learning rate')
    g.add_argument('--lr_horizon', type=int, default=d['lr_horizon'],
                   help='epochs of the half-cosine decay (the authors: 1000, of which runs use --nepoch)')
    g.add_argument('--grad_clip', type=float, default=d['grad_clip'], help='gradient-norm clip')
    g.add_argument('--feature_dim', type=int, default=d['feature_dim'], help='width of the denoiser')
    g.add_argument('--k', type=int, default=d['k'], help='neighbours retrieved per sample')
    g.add_argument('--n_timesteps', type=int, default=d['n_timesteps'], help='diffusion steps T')
    g.add_argument('--beta_schedule', default=d['beta_schedule'], choices=sorted(BETA_SCHEDULES))
    g.add_argument('--ddim_n_step', type=int, default=d['ddim_n_step'], help='DDIM steps at inference')
    g.add_argument('--compile', default=d['compile'], action=argparse.BooleanOptionalAction,
                   help='torch.compile the denoiser training step (fewer kernel launches on a GPU)')
    g.add_argument('--eval_every', type=int, default=d['eval_every'],
                   help='evaluate on the clean validation split every N epochs after warm-up')
    g = p.add_argument_group('run')
    g.add_argument('--device', default=d['device'], help='auto, cpu, cuda or cuda:N')
    g.add_argument('--num_workers', type=int, default=d['num_workers'],
                   help='DataLoader workers for decoding image files (CIFAR is held in memory and needs none)')
    g.add_argument('--seed', type=int, default=d['seed'])
    g.add_argument('--out_dir', default=d['out_dir'], help='parent folder of run folders')
    g.add_argument('--run_name', default=d['run_name'], help='run folder name (default: derived from flags)')
    g.add_argument('--cache_dir', default=d['cache_dir'], help='feature and neighbour caches')
    g.add_argument('--eval_batch_size', type=int, default=d['eval_batch_size'])
    g.add_argument('--encode_batch_size', type=int, default=d['encode_batch_size'])
    g.add_argument('--checkpoint_every', type=int, default=d['checkpoint_every'],
                   help='write last.pt every N epochs (1: an interrupted run loses no finished epoch)')
    g.add_argument('--n_samples', type=int, default=d['n_samples'],
                   help='stochastic DDIM samples per training image for the saved class probabilities '
                        '(train_probs.npy); 0 skips them')
    g.add_argument('--resume', default=d['resume'], metavar='RUN_DIR',
                   help='continue the run in RUN_DIR from its last checkpoint')
    g.add_argument('--debug', action='store_true', help='show the traceback of a refusal, not only its one line')
    g = p.add_argument_group('prediction with a trained run')
    g.add_argument('--predict', default=d['predict'], metavar='RUN_DIR',
                   help="apply RUN_DIR's best checkpoint instead of training")
    g.add_argument('--predict_split', default=d['predict_split'], choices=('train', 'val', 'test'))
    g.add_argument('--predict_folder', default=d['predict_folder'], metavar='DIR',
                   help='predict every image under DIR instead of a split (writes a CSV too)')
    if dataset_args is not None:
        dataset_args(p.add_argument_group('dataset'))
    return p


def parse_config(description, defaults, argv=None, dataset_args=None):
    cfg = build_parser(description, defaults, dataset_args).parse_args(argv)
    cfg.command_line_flags = given_flags(build_parser(description, defaults, dataset_args), argv)
    return cfg


def given_flags(parser, argv):
    """The flags the command line gives (a resumed run refuses those that would change it)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return sorted(vars(parser.parse_args(argv)))
