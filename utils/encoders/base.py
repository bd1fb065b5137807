"""The frame every frozen encoder shares (f_p, and the frozen backbones of the diffusion encoders).

Every encoder takes uint8 N×3×H×W images on its device and returns float32 features, doing its own
preprocessing there (each concrete encoder's module says which). `fingerprint` identifies the weights,
so feature caches made with other weights are never reused. The concrete encoders build on this class
in their own modules; utils/encoders/factory.py builds the one a run names.
"""
import os

import torch
import torch.nn as nn

from utils.data.images import channels_last
from utils.storage.fingerprints import weights_fingerprint

# the repository's model/ folder: encoder checkpoints made here (pretrain_SimCLR.py) or copied in
MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'model')


class FrozenEncoder(nn.Module):
    """Common frame: eval mode, no gradients, optional bf16 autocast on CUDA."""
    name = 'encoder'
    dim = 0
    version = 1  # raise when preprocessing or the feature definition changes: invalidates caches

    def __init__(self):
        super().__init__()
        self.bf16 = True
        self.fingerprint = ''
        # follows .to(device); not saved, so released state dicts load strictly
        self.register_buffer('anchor', torch.zeros(0), persistent=False)

    @property
    def device(self):
        return self.anchor.device

    def preprocess(self, images):
        raise NotImplementedError

    def features(self, x):
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, images):
        device = images.device
        use_bf16 = self.bf16 and device.type == 'cuda'
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            return self.features(channels_last(self.preprocess(images))).float()

    def use_kernels(self, kind):
        """Run the per-step encode with `kind` of utils/runtime/frozen_kernels ('compiled': torch.compile of
        `features`); True where it applies. Folding ('fused') needs a known trunk: the SimCLR encoder's."""
        if kind != 'compiled':
            return False
        if self.kernels_in_use(kind):
            self.features = torch.compile(self.features, dynamic=False)
        return True

    def kernels_in_use(self, kind):
        """Set `kind` as the encoder's way of running: True the first time, False when it is already (a second
        call changes nothing); one encoder is not switched from one way to another."""
        current = getattr(self, 'kernels', 'eager')
        if current not in ('eager', kind):
            raise ValueError(f'this encoder already runs with --frozen_kernels {current}; load it again for {kind}')
        self.kernels = kind
        return current != kind

    def describe(self):
        """What, besides the weights, decides the features: part of every cache key."""
        return {'class': type(self).__name__, 'version': self.version,
                'mean': list(getattr(self, 'mean', ())), 'std': list(getattr(self, 'std', ()))}

    def finish(self, device):
        self.requires_grad_(False)
        self.eval()
        self.fingerprint = weights_fingerprint(self)
        return self.to(device)


@torch.no_grad()
def encode_all(encoder, images, batch_size=512, progress=True, desc='f_p features'):
    """Features of all images (uint8, any device), computed in batches on the encoder's device."""
    from utils.runtime.progress import progress_bar
    device = encoder.device
    out = torch.empty(len(images), encoder.dim, device=device)
    for start in progress_bar(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        out[start:start + len(batch)] = encoder.encode(batch)
    return out
