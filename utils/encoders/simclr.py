"""The SimCLR f_p: a ResNet with the CIFAR stem, in the authors' released checkpoint format.

A checkpoint is a state dict with the backbone under `f.` (an nn.Sequential of the ResNet's children
without the fc and max-pool) and the projection head under `g.` (not used for features). The feature is
the L2-normalised pooled vector (2048-d for ResNet-50).
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.data.images import CIFAR_MEAN, CIFAR_STD, normalize_images
from utils.encoders.base import FrozenEncoder
from utils.errors import EncoderError
from utils.networks import cifar_resnet_trunk, resnet_width
from utils.runtime.frozen_kernels import fuse_trunk
from utils.storage.loading import load_torch


class SimCLREncoder(FrozenEncoder):
    """ResNet with the CIFAR stem: `f` is the trunk, `g` the projection head (unused for features).

    The feature is the L2-normalised pooled vector (2048-d for ResNet-50).
    """
    name = 'SimCLR'

    def __init__(self, arch='resnet50', proj_hidden=512, proj_dim=128, mean=CIFAR_MEAN, std=CIFAR_STD):
        super().__init__()
        self.arch = arch
        self.dim = resnet_width(arch)
        self.mean, self.std = mean, std
        self.f = nn.Sequential(*cifar_resnet_trunk(arch))
        self.g = nn.Sequential(nn.Linear(self.dim, proj_hidden, bias=False), nn.BatchNorm1d(proj_hidden),
                               nn.ReLU(inplace=True), nn.Linear(proj_hidden, proj_dim, bias=True))

    def preprocess(self, images):
        return normalize_images(images, self.mean, self.std)

    def features(self, x):
        return F.normalize(torch.flatten(self.f(x), 1), dim=-1)

    def use_kernels(self, kind):
        """'fused': the trunk's BatchNorms folded into its convolutions, fused with the ReLUs and residuals on
        CUDA (utils/runtime/frozen_kernels). The weights' fingerprint, taken at loading, names the unfolded
        weights, so feature caches are shared with eager runs; the state dict is the folded one from then on."""
        if kind != 'fused':
            return super().use_kernels(kind)
        if self.kernels_in_use(kind):
            self.f = fuse_trunk(self.f)
        return True


def simclr_arch_of(state_dict):
    """Infer the trunk from a SimCLR state dict: bottleneck blocks → ResNet-50; block counts → 18/34."""
    if 'f.3.0.conv3.weight' in state_dict:
        return 'resnet50'
    blocks = {k.split('.')[2] for k in state_dict if k.startswith('f.5.')}
    return 'resnet34' if len(blocks) == 6 else 'resnet18'


def load_simclr(path, device='cpu', mean=CIFAR_MEAN, std=CIFAR_STD):
    """A SimCLR encoder from a checkpoint in the released format (`f.*` backbone, `g.*` head)."""
    if not os.path.isfile(path):
        raise EncoderError(
            f'SimCLR checkpoint {path} not found. Make one with `python pretrain_SimCLR.py` or pass '
            f'--fp_checkpoint PATH (a state dict with the backbone under f.* and the head under g.*).')
    state = load_torch(path, 'SimCLR checkpoint', fix='pass another --fp_checkpoint')
    if isinstance(state, dict) and 'state_dict' in state and isinstance(state['state_dict'], dict):
        state = state['state_dict']
    if not isinstance(state, dict) or not any(k.startswith('f.') for k in state):
        raise EncoderError(f'{path} is not a SimCLR checkpoint: expected a state dict with keys f.* '
                           f'(backbone) and g.* (projection head)')
    arch = simclr_arch_of(state)
    head = state.get('g.0.weight'), state.get('g.3.weight')
    if head[0] is None or head[1] is None:
        raise EncoderError(f'{path}: projection head g.0/g.3 missing; not the released SimCLR format')
    encoder = SimCLREncoder(arch, proj_hidden=head[0].shape[0], proj_dim=head[1].shape[0], mean=mean, std=std)
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EncoderError(f'{path} does not fit a SimCLR {arch} with the CIFAR stem '
                           f'(3×3 stride-1 conv1, no max-pool): {str(exc)[:500]}') from exc
    encoder.source = os.path.abspath(path)
    return encoder.finish(device)
