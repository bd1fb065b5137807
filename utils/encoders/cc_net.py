"""The Clothing1M f_p of the paper: the "Centrality and Consistency" (CC) classifier, `CC_net.pt`.

The authors' network is a torchvision ResNet-50 (fc replaced by identity) feeding three heads: a
14-way linear classifier (`classification_fc`), a 2048→128 linear projection (`dr`), and two small
MLP classifiers on that projection (`fc1`, `fc2`). The feature the authors retrieve and condition
on is the 128-d projection `dr(resnet(x))`, unnormalised; the heads after it are loaded (so the
released state dict loads strictly) but unused.

Their images were normalised with Clothing1M's own channel statistics, not ImageNet's, after a
shorter-side resize to 256 and a 224 centre crop (what utils/data/image_files.py decodes at --image_size 224).
"""
import os

import torch
import torch.nn as nn

from utils.data.images import CLOTHING1M_MEAN, CLOTHING1M_STD, normalize_images
from utils.encoders.base import FrozenEncoder
from utils.errors import EncoderError
from utils.networks import torchvision_resnet
from utils.storage.published import cc_net_path
from utils.storage.loading import load_torch

CC_CHECKPOINT = 'CC_net.pt'


class _ProjectionClassifier(nn.Module):
    """128 → 64 → 64 → classes with BatchNorm, ReLU and dropout: the CC network's `fc1`/`fc2` heads."""

    def __init__(self, n_class, dim=128, hidden=64):
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout())
        self.fc2 = nn.Sequential(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Dropout())
        self.fc3 = nn.Linear(hidden, n_class)

    def forward(self, x):
        return self.fc3(self.fc2(self.fc1(x)))


class CCEncoder(FrozenEncoder):
    """The CC classifier as a frozen encoder; attribute names give the released file's state-dict keys
    (`model_resnet.*`, `classification_fc.*`, `dr.*`, `fc1.*`, `fc2.*`)."""
    name = 'CC'
    resolution = 224

    def __init__(self, n_class=14, dim=128):
        super().__init__()
        self.dim = dim
        self.mean, self.std = CLOTHING1M_MEAN, CLOTHING1M_STD
        self.model_resnet = torchvision_resnet('resnet50', weights=None)
        width = self.model_resnet.fc.in_features
        self.model_resnet.fc = nn.Identity()
        self.classification_fc = nn.Linear(width, n_class)
        self.dr = nn.Linear(width, dim)
        self.fc1 = _ProjectionClassifier(n_class, dim)
        self.fc2 = _ProjectionClassifier(n_class, dim)

    def preprocess(self, images):
        return normalize_images(images, self.mean, self.std, self.resolution)

    def features(self, x):
        return self.dr(self.model_resnet(x))


def _mismatch(encoder, state):
    """One line saying how `state` differs from the CC network's state dict, or '' if it fits."""
    expected = encoder.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f'{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})' for k, v in expected.items()
              if k in state and tuple(getattr(state[k], 'shape', ())) != tuple(v.shape)]
    parts = [f'{len(found)} {what} (first: {found[0]})' for what, found in
             (('missing keys', missing), ('unexpected keys', unexpected), ('tensors of another shape', shapes))
             if found]
    return '; '.join(parts)


def load_cc(path=None, device='cpu', inputs_dir=None):
    """The CC f_p from a state dict as the authors saved it (a 'module.' prefix is tolerated); without
    a path, the published CC_net.pt, fetched and verified (utils/storage/published.py)."""
    path = path or cc_net_path(inputs_dir)
    if not os.path.isfile(path):
        raise EncoderError(f'CC classifier checkpoint {path} not found: copy the published {CC_CHECKPOINT} '
                           f"(puar-playground/LRA-diffusion, model/{CC_CHECKPOINT}) there or pass --fp_checkpoint PATH")
    state = load_torch(path, 'CC classifier checkpoint', fix='pass another --fp_checkpoint')
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderError(f'{path} is not a state dict (name → tensor); expected the CC classifier {CC_CHECKPOINT}')
    state = {k.removeprefix('module.'): v for k, v in state.items()}
    n_class = state['classification_fc.weight'].shape[0] if 'classification_fc.weight' in state else 14
    dim = state['dr.weight'].shape[0] if 'dr.weight' in state else 128
    encoder = CCEncoder(n_class, dim)
    problem = _mismatch(encoder, state)
    if problem:
        raise EncoderError(f'{path} does not fit the CC classifier (ResNet-50 + {dim}-d projection dr + heads, '
                           f'as in {CC_CHECKPOINT}): {problem}')
    encoder.load_state_dict(state, strict=True)
    encoder.source = os.path.abspath(path)
    return encoder.finish(device)
