"""A torchvision ImageNet ResNet's pooled features: the frozen backbone of the `*_l` diffusion
encoders, and an f_p loaded from a classifier checkpoint (--fp_encoder classifier).
"""
import os

import torch
import torch.nn as nn

from utils.data.images import IMAGENET_MEAN, IMAGENET_STD, normalize_images
from utils.encoders.base import FrozenEncoder
from utils.errors import CorruptFile, EncoderError
from utils.networks import RESNETS, resnet_width, torchvision_resnet
from utils.storage.fingerprints import file_digest
from utils.storage.loading import load_torch


class ImageNetResNet(FrozenEncoder):
    """A standard-stem torchvision ResNet's pooled features (the fc is dropped), ImageNet preprocessing.

    Serves as the frozen backbone of the `*_l` diffusion encoders and, loaded from a classifier
    checkpoint, as an f_p encoder (`--fp_encoder classifier`)."""
    name = 'ResNet'
    resolution = 224

    def __init__(self, arch):
        super().__init__()
        if arch not in RESNETS:
            raise EncoderError(f'unknown ResNet {arch!r}; choose from {", ".join(sorted(RESNETS))}')
        self.arch, self.dim = arch, resnet_width(arch)
        self.name = f'imagenet-{arch}'
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.net = torchvision_resnet(arch, weights=None)
        self.net.fc = nn.Identity()

    def preprocess(self, images):
        return normalize_images(images, self.mean, self.std, self.resolution)

    def features(self, x):
        return self.net(x)


# The ImageNet files the authors' ResNets load: torchvision's first releases, named by the start of their
# SHA-256. torchvision's DEFAULT is no longer theirs for ResNet-50 (its V2 weights: 80.9 % top-1 against
# 76.1 %), which would change every x_e a *_l encoder gives and where Clothing1M's and WebVision's
# fine-tuning starts.
IMAGENET_URLS = {
    'resnet18': 'https://download.pytorch.org/models/resnet18-5c106cde.pth',
    'resnet34': 'https://download.pytorch.org/models/resnet34-333f7ec4.pth',
    'resnet50': 'https://download.pytorch.org/models/resnet50-19c8e357.pth',
}


def imagenet_weights_file(arch):
    """(where torch.hub keeps the authors' ImageNet file of `arch`, the SHA-256 prefix its name carries)."""
    name = os.path.basename(IMAGENET_URLS[arch])
    return os.path.join(torch.hub.get_dir(), 'checkpoints', name), name.rsplit('-', 1)[1].split('.')[0]


def is_the_imagenet_file(path, arch):
    return file_digest(path, 'sha256').startswith(imagenet_weights_file(arch)[1])


def torchvision_weights(arch):
    """The authors' ImageNet state dict of `arch`: the file in torch.hub's cache, checked against the SHA-256
    its name begins, read weights-only and refused in one line naming it where it is another file, damaged
    or hostile; downloaded (when online, with the same check) where absent."""
    url = IMAGENET_URLS[arch]
    cached, expected = imagenet_weights_file(arch)
    if os.path.isfile(cached):
        if not is_the_imagenet_file(cached, arch):
            raise CorruptFile(f'cached ImageNet weights for {arch} {cached} are not the file of that name (its '
                              f'SHA-256 does not begin {expected}); delete it to download it again')
        return load_torch(cached, f'cached ImageNet weights for {arch}', fix='delete it to download it again')
    try:  # weights_only: torch.hub's default unpickles anything; check_hash: the name's SHA-256 prefix
        return torch.hub.load_state_dict_from_url(url, progress=False, weights_only=True, check_hash=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EncoderError(f'ImageNet weights for {arch} are not cached in {os.path.dirname(cached)} and could not '
                           f'be downloaded ({first}); pass a local checkpoint path instead (e.g. '
                           f'--diff_encoder_weights /path/to/{arch}.pth)') from exc


def load_imagenet_resnet(arch, weights='imagenet', device='cpu', seed=0):
    """weights: 'imagenet' (the authors' torchvision release, downloaded when online), 'random', or a checkpoint path
    (a torchvision-layout classifier state dict; a 'module.' prefix and the fc are ignored)."""
    with torch.random.fork_rng():  # random weights are seeded without touching the caller's stream
        torch.manual_seed(seed)
        encoder = ImageNetResNet(arch)
    if weights == 'imagenet':
        state = torchvision_weights(arch)
        source = f'torchvision {arch} ImageNet ({os.path.basename(IMAGENET_URLS[arch])})'
    elif weights == 'random':
        state, source = None, f'random {arch} (seed {seed})'
    else:
        if not os.path.isfile(weights):
            raise EncoderError(f'ResNet checkpoint {weights} not found')
        state = load_torch(weights, 'ResNet checkpoint', fix='pass another --diff_encoder_weights')
        if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
            state = state['state_dict']
        if not isinstance(state, dict):
            raise EncoderError(f'{weights} holds a {type(state).__name__}, not a torchvision {arch} state dict')
        source = os.path.abspath(weights)
    if state is not None:
        state = {k.removeprefix('module.'): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith('fc.')}
        try:
            encoder.net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise EncoderError(f'{source} does not fit a torchvision {arch}: {str(exc)[:500]}') from exc
    encoder.source = source
    return encoder.finish(device)
