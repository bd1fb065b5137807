"""Diffusion encoders: the image embedding x_e that gates the denoiser (`--diff_encoder`).

Each entry says what it reads: the image (normalised, augmented while training), the f_p features,
or 'cached': the pooled features of a frozen ImageNet ResNet (torchvision weights, or a local file
via --diff_encoder_weights), computed once like f_p, followed by a trainable linear layer to
feature_dim (the `_l` encoders of the authors' large-image scripts, with the backbone frozen).
Reading features is the fast path: training then runs on cached features alone.
"""
import torch.nn as nn

from model_diffusion import Denoiser

from utils.networks import cifar_resnet, resnet_width


def _mlp(n_in, width):
    return nn.Sequential(nn.Flatten(1), nn.Linear(n_in, width), nn.BatchNorm1d(width), nn.Softplus(),
                         nn.Linear(width, width), nn.BatchNorm1d(width), nn.Softplus(),
                         nn.Linear(width, width))


# name → (input kind, builder(feature_dim, fp_dim, image_shape))
X_ENCODERS = {
    'resnet18': ('image', lambda width, fp_dim, shape: cifar_resnet('resnet18', width)),
    'resnet34': ('image', lambda width, fp_dim, shape: cifar_resnet('resnet34', width)),
    'resnet50': ('image', lambda width, fp_dim, shape: cifar_resnet('resnet50', width)),
    'linear': ('image', lambda width, fp_dim, shape: _mlp(shape[0] * shape[1] * shape[2], width)),
    'fp_mlp': ('features', lambda width, fp_dim, shape: _mlp(fp_dim, width)),
    'resnet18_l': ('cached', lambda width, fp_dim, shape: nn.Linear(resnet_width('resnet18'), width)),
    'resnet34_l': ('cached', lambda width, fp_dim, shape: nn.Linear(resnet_width('resnet34'), width)),
    'resnet50_l': ('cached', lambda width, fp_dim, shape: nn.Linear(resnet_width('resnet50'), width)),
}


def cached_backbone_arch(name):
    """The frozen backbone whose features a 'cached' diffusion encoder reads."""
    return name.removesuffix('_l')


def x_encoder_input(name):
    return X_ENCODERS[name][0]


def build_x_encoder(name, feature_dim, fp_dim, image_shape):
    if name not in X_ENCODERS:
        raise ValueError(f'unknown --diff_encoder {name!r}; choose from {", ".join(sorted(X_ENCODERS))}')
    return X_ENCODERS[name][1](feature_dim, fp_dim, image_shape)


def build_model(cfg, n_class, fp_dim, image_shape):
    """The denoiser with its diffusion encoder, as the run's flags describe it."""
    x_encoder = build_x_encoder(cfg.diff_encoder, cfg.feature_dim, fp_dim, image_shape)
    return Denoiser(n_class, fp_dim, cfg.feature_dim, x_encoder, n_timesteps=cfg.n_timesteps, n_layers=cfg.n_layers)
