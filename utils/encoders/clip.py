"""The CLIP f_p: the image tower of an OpenAI CLIP model, loaded by the `clip` package.

The feature is `encode_image` in float32 (not normalised). Images are resized (bicubic) to the model's
input resolution and normalised with CLIP's mean/std on the device. `--clip_tower fused` runs the
same weights through utils/encoders/clip_tower.py; `clip` through the package's own module.
"""
import os
import warnings

import torch

from utils.data.images import CLIP_MEAN, CLIP_STD, normalize_images
from utils.encoders.base import FrozenEncoder
from utils.encoders.clip_tower import VisionTower
from utils.errors import EncoderError
from utils.storage.loading import load_torch

CLIP_NAMES = ('ViT-B/32', 'ViT-B/16', 'ViT-L/14')


# how a CLIP image tower runs: rebuilt for inference (utils/encoders/clip_tower.py), or the clip package's own module
CLIP_TOWERS = ('fused', 'clip')


class CLIPEncoder(FrozenEncoder):
    """The image tower of an OpenAI CLIP model; the feature is `encode_image` in float32.

    tower 'fused' (utils/encoders/clip_tower.py): the same function rebuilt for inference; on CUDA in bf16 its
    weights are converted once, on first use, and kept beside the float32 ones. 'clip': the clip
    package's own module, under bf16 autocast on CUDA (every weight cast again on every call), as
    the package ran it before the fused tower; its feature caches keep their keys."""
    name = 'CLIP'

    def __init__(self, clip_model, clip_type, tower='fused'):
        super().__init__()
        if tower not in CLIP_TOWERS:
            raise EncoderError(f'unknown CLIP tower {tower!r}; choose from {", ".join(CLIP_TOWERS)}')
        visual = clip_model.visual.float()
        self.tower = tower
        self.visual = VisionTower.from_clip(visual) if tower == 'fused' else visual
        self.resolution = visual.input_resolution
        self.dim = visual.output_dim
        self.clip_type = clip_type
        self._converted = None  # ((dtype, device), the fused tower in that dtype): not part of the state

    def preprocess(self, images):
        return normalize_images(images, CLIP_MEAN, CLIP_STD, self.resolution, mode='bicubic')

    def features(self, x):
        return self.visual(x.to(self.visual.conv1.weight.dtype))

    def describe(self):
        described = super().describe()
        return described if self.tower == 'clip' else {**described, 'tower': self.tower}

    def tower_in(self, dtype):
        """The fused tower computing in `dtype`: its own float32 weights, or a copy converted once."""
        if dtype == torch.float32:
            return self.visual
        if self._converted is None or self._converted[0] != (dtype, self.device):
            self._converted = None  # free the old copy before making the new one
            self._converted = ((dtype, self.device), self.visual.copy_as(dtype))
        return self._converted[1]

    def use_kernels(self, kind):
        """'compiled' compiles `features`, which only the clip package's tower runs through; the fused
        tower is that network rebuilt for inference already, and nothing applies to it."""
        return super().use_kernels(kind) if self.tower == 'clip' else False

    @torch.no_grad()
    def encode(self, images):
        if self.tower == 'clip':
            return super().encode(images)
        cuda = images.device.type == 'cuda'
        dtype = torch.bfloat16 if self.bf16 and cuda else torch.float32
        x = self.preprocess(images)
        x = x.to(dtype, memory_format=torch.channels_last) if cuda else x
        return self.tower_in(dtype)(x).float()


def load_clip(clip_type, device='cpu', download_root=None, tower='fused'):
    """CLIP image tower by name (downloaded by the `clip` package when online) or local file; `tower`:
    one of CLIP_TOWERS (see CLIPEncoder)."""
    with warnings.catch_warnings():  # clip imports pkg_resources and tries torch.jit.load first
        warnings.simplefilter('ignore')
        import clip
        return _load_clip(clip, clip_type, device, download_root, tower)


def _load_clip(clip, clip_type, device, download_root, tower):
    path = _clip_file(clip, clip_type, download_root)
    state = _clip_weights(path)
    try:
        model = clip.model.build_model(state)
    except (KeyError, IndexError, AttributeError, TypeError, ValueError, RuntimeError) as exc:
        raise EncoderError(f'{path} is not a CLIP checkpoint the clip package can build '
                           f'({type(exc).__name__}: {exc})') from None
    encoder = CLIPEncoder(model, clip_type, tower)
    encoder.source = clip_type
    return encoder.finish(device)


def _clip_file(clip, clip_type, download_root):
    """The checkpoint file of a released model (downloaded, SHA-256 checked by the clip package) or a local path."""
    if os.path.isfile(clip_type):
        return clip_type
    if clip_type not in clip.available_models():
        raise EncoderError(f'unknown --CLIP_type {clip_type!r}: use one of {", ".join(CLIP_NAMES)} or the '
                           f'path of a local CLIP checkpoint')
    cache = download_root or os.path.expanduser('~/.cache/clip')
    try:
        return clip.clip._download(clip.clip._MODELS[clip_type], cache)
    except (OSError, RuntimeError) as exc:
        raise EncoderError(
            f'CLIP {clip_type} weights are not in {cache} and could not be downloaded ({exc}). '
            f'Offline, copy the checkpoint file from an online machine (the clip package keeps it in '
            f'~/.cache/clip) and pass --CLIP_type /path/to/file.pt') from exc


def _clip_weights(path):
    """The state dict in a CLIP checkpoint, read without running code from the file.

    The released files are TorchScript archives: torch.jit.load restores only TorchScript types and
    compiles (never runs) their code, and only the weights are taken. Anything else is read as a state
    dict with weights_only=True. (`clip.load` falls back to a plain torch.load, which unpickles anything.)"""
    try:
        return torch.jit.load(path, map_location='cpu').state_dict()
    except RuntimeError:
        pass  # not a TorchScript archive
    state = load_torch(path, 'CLIP checkpoint')
    if not isinstance(state, dict):
        raise EncoderError(f'{path} holds a {type(state).__name__}, not the state dict of a CLIP model')
    return state
