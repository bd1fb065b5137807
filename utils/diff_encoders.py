"""Diffusion encoders: the image embedding x_e that gates the denoiser (`--diff_encoder`).

Each entry says what it reads: the image (normalised, augmented while training), the f_p features,
or 'cached'. The `_l` encoders of the authors' large-image scripts are an ImageNet ResNet (torchvision
weights, or a local file via --diff_encoder_weights) followed by their head (two linear layers,
pooled width → 512 → feature_dim: utils/networks.authors_head);
--diff_backbone says what happens to the ResNet:
- 'cached': frozen, its pooled features computed once like f_p ('cached' input). The fast path:
  training then runs on cached features alone.
- 'tuned': fine-tuned with the denoiser on augmented images ('image' input), as the authors train
  on Clothing1M and WebVision; image files are then decoded every epoch.
"""
import torch.nn as nn

from model_diffusion import Denoiser
from utils.encoders.imagenet import load_imagenet_resnet
from utils.networks import authors_head, cifar_resnet, imagenet_resnet, pytorch_conv_init

BACKBONES = ('cached', 'tuned')


def _mlp(n_in, width):
    return nn.Sequential(nn.Flatten(1), nn.Linear(n_in, width), nn.BatchNorm1d(width), nn.Softplus(),
                         nn.Linear(width, width), nn.BatchNorm1d(width), nn.Softplus(),
                         nn.Linear(width, width))


# name → (input kind, builder(feature_dim, fp_dim, image_shape))
DIFF_ENCODERS = {
    'resnet18': ('image', lambda width, fp_dim, shape: pytorch_conv_init(cifar_resnet('resnet18', width))),
    'resnet34': ('image', lambda width, fp_dim, shape: pytorch_conv_init(cifar_resnet('resnet34', width))),
    'resnet50': ('image', lambda width, fp_dim, shape: pytorch_conv_init(cifar_resnet('resnet50', width))),
    'linear': ('image', lambda width, fp_dim, shape: _mlp(shape[0] * shape[1] * shape[2], width)),
    'fp_mlp': ('features', lambda width, fp_dim, shape: _mlp(fp_dim, width)),
    'resnet18_l': ('cached', lambda width, fp_dim, shape: authors_head('resnet18', width)),
    'resnet34_l': ('cached', lambda width, fp_dim, shape: authors_head('resnet34', width)),
    'resnet50_l': ('cached', lambda width, fp_dim, shape: authors_head('resnet50', width)),
}


def cached_backbone_arch(name):
    """The frozen backbone whose features a 'cached' diffusion encoder reads."""
    return name.removesuffix('_l')


def tunes_backbone(name, backbone):
    return DIFF_ENCODERS[name][0] == 'cached' and backbone == 'tuned'


def diff_encoder_input(name, backbone='cached'):
    """What the diffusion encoder reads: 'image', 'features' (f_p's) or 'cached' (a frozen backbone's)."""
    return 'image' if tunes_backbone(name, backbone) else DIFF_ENCODERS[name][0]


def build_diff_encoder(name, feature_dim, fp_dim, image_shape, backbone='cached'):
    if name not in DIFF_ENCODERS:
        raise ValueError(f'unknown --diff_encoder {name!r}; choose from {", ".join(sorted(DIFF_ENCODERS))}')
    if tunes_backbone(name, backbone):  # the whole ResNet, its fc the authors' head
        return imagenet_resnet(cached_backbone_arch(name), feature_dim)
    return DIFF_ENCODERS[name][1](feature_dim, fp_dim, image_shape)


def load_tuned_backbone(model, cfg):
    """A fresh run's tuned `_l` encoder starts from the backbone weights --diff_encoder_weights names
    (its head from the seeded initialisation); a resumed or predicting run reads its checkpoint."""
    if not tunes_backbone(cfg.diff_encoder, cfg.diff_backbone):
        return model
    backbone = load_imagenet_resnet(cached_backbone_arch(cfg.diff_encoder), cfg.diff_encoder_weights, seed=cfg.seed)
    missing, unexpected = model.diff_encoder.load_state_dict(backbone.net.state_dict(), strict=False)
    head = sorted(k for k in model.diff_encoder.state_dict() if k.startswith('fc.'))
    assert not unexpected and sorted(missing) == head, (missing, unexpected)
    return model


def build_model(cfg, n_class, fp_dim, image_shape):
    """The denoiser with its diffusion encoder, as the run's flags describe it."""
    diff_encoder = build_diff_encoder(cfg.diff_encoder, cfg.feature_dim, fp_dim, image_shape, cfg.diff_backbone)
    return Denoiser(n_class, fp_dim, cfg.feature_dim, diff_encoder, n_timesteps=cfg.n_timesteps, n_layers=cfg.n_layers,
                    fp_conditioning=getattr(cfg, 'fp_conditioning', True))
