"""Frozen f_p encoders: SimCLR ResNet (CIFAR stem), CLIP image towers, and raw pixels.

Every encoder takes uint8 N×3×H×W images on its device and returns float32 features, doing its
own preprocessing on the GPU (CIFAR normalisation for SimCLR; bicubic resize and CLIP
normalisation for CLIP). `fingerprint` identifies the weights, so feature caches made with other
weights are never reused.
"""
import functools
import hashlib
import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.clip_tower import VisionTower
from utils.data import CIFAR_MEAN, CIFAR_STD, CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from utils.networks import cifar_resnet_trunk, resnet_width
from utils.published import fetch, is_published

CLIP_NAMES = ('ViT-B/32', 'ViT-B/16', 'ViT-L/14')
# how a CLIP image tower runs: rebuilt for inference (utils/clip_tower.py), or the clip package's own module
CLIP_TOWERS = ('fused', 'clip')
MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'model')


class EncoderError(RuntimeError):
    pass


def weights_fingerprint(module):
    """A short hash of every parameter and buffer (names, shapes and float64 moments)."""
    h = hashlib.sha1()
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().double()
            h.update(f'{name}{tuple(t.shape)}{t.sum().item():.10e}{t.abs().sum().item():.10e}'
                     f'{t.flatten()[:8].tolist()}'.encode())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _channel_constant(values, device):
    with torch.inference_mode(False):  # usable outside inference mode too
        return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def channel_constant(values, device):
    """Per-channel constants as a 1×C×1×1 float32 tensor on `device`, made once per device and reused
    (read only): made at every call it would be a blocking host-to-device copy in every hot loop."""
    return _channel_constant(tuple(float(v) for v in values), torch.device(device))


def normalize_images(images, mean, std, size=None, mode='bilinear'):
    """uint8 N×3×H×W → float, (x/255 − mean)/std, computed on the images' device; resized first to
    size×size (with `mode`) when a size is given and differs."""
    x = images.float() / 255
    if size is not None and (x.shape[-1] != size or x.shape[-2] != size):
        x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False)
    return (x - channel_constant(mean, images.device)) / channel_constant(std, images.device)


def channels_last(x, device=None):
    """A tensor or module in channels-last memory format on CUDA, where convolutions run faster in it;
    unchanged on the CPU. `device` defaults to the tensor's own."""
    device = device if device is not None else x.device
    return x.to(memory_format=torch.channels_last) if torch.device(device).type == 'cuda' else x


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

    def describe(self):
        """What, besides the weights, decides the features: part of every cache key."""
        return {'class': type(self).__name__, 'version': self.version,
                'mean': list(getattr(self, 'mean', ())), 'std': list(getattr(self, 'std', ()))}

    def finish(self, device):
        self.requires_grad_(False)
        self.eval()
        self.fingerprint = weights_fingerprint(self)
        return self.to(device)


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
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:
        raise EncoderError(f'{path} could not be read as a torch checkpoint ({exc})') from exc
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


class CLIPEncoder(FrozenEncoder):
    """The image tower of an OpenAI CLIP model; the feature is `encode_image` in float32.

    tower 'fused' (utils/clip_tower.py): the same function rebuilt for inference; on CUDA in bf16 its
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
    if clip_type not in clip.available_models() and not os.path.isfile(clip_type):
        raise EncoderError(f'unknown --CLIP_type {clip_type!r}: use one of {", ".join(CLIP_NAMES)} or the '
                           f'path of a local CLIP checkpoint')
    try:
        model, _ = clip.load(clip_type, device='cpu', jit=False, download_root=download_root)
    except (OSError, RuntimeError) as exc:
        if os.path.isfile(clip_type):
            raise EncoderError(f'{clip_type} is not a CLIP checkpoint the clip package can build ({exc})') \
                from exc
        cache = download_root or os.path.expanduser('~/.cache/clip')
        raise EncoderError(
            f'CLIP {clip_type} weights are not in {cache} and could not be downloaded ({exc}). '
            f'Offline, copy the checkpoint file from an online machine (the clip package keeps it in '
            f'~/.cache/clip) and pass --CLIP_type /path/to/file.pt') from exc
    encoder = CLIPEncoder(model, clip_type, tower)
    encoder.source = clip_type
    return encoder.finish(device)


class RawPixels(FrozenEncoder):
    """No pre-trained encoder: normalised pixels, flattened and L2-normalised (unit norm, like
    SimCLR's features: unscaled 3072-d pixels swamp y_t in the denoiser's first layer).
    For offline demos and ablations."""
    name = 'raw'
    version = 2

    def __init__(self, image_shape, mean, std):
        super().__init__()
        self.dim = int(torch.tensor(image_shape).prod())
        self.mean, self.std = mean, std
        self.bf16 = False
        self.register_buffer('shape_tag', torch.tensor(image_shape))  # part of the fingerprint

    def preprocess(self, images):
        return normalize_images(images, self.mean, self.std)

    def features(self, x):
        return F.normalize(torch.flatten(x, 1), dim=-1)


class ImageNetResNet(FrozenEncoder):
    """A standard-stem torchvision ResNet's pooled features (the fc is dropped), ImageNet preprocessing.

    Serves as the frozen backbone of the `*_l` diffusion encoders and, loaded from a classifier
    checkpoint, as an f_p encoder (`--fp_encoder classifier`)."""
    name = 'ResNet'
    resolution = 224

    def __init__(self, arch):
        super().__init__()
        from utils.networks import RESNETS
        if arch not in RESNETS:
            raise EncoderError(f'unknown ResNet {arch!r}; choose from {", ".join(sorted(RESNETS))}')
        self.arch, self.dim = arch, resnet_width(arch)
        self.name = f'imagenet-{arch}'
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.net = RESNETS[arch](weights=None)
        self.net.fc = nn.Identity()

    def preprocess(self, images):
        return normalize_images(images, self.mean, self.std, self.resolution)

    def features(self, x):
        return self.net(x)


def load_imagenet_resnet(arch, weights='imagenet', device='cpu', seed=0):
    """weights: 'imagenet' (torchvision's, downloaded when online), 'random', or a checkpoint path
    (a torchvision-layout classifier state dict; a 'module.' prefix and the fc are ignored)."""
    with torch.random.fork_rng():  # random weights are seeded without touching the caller's stream
        torch.manual_seed(seed)
        encoder = ImageNetResNet(arch)
    if weights == 'imagenet':
        import torchvision
        try:
            state = torchvision.models.get_model_weights(arch).DEFAULT.get_state_dict(progress=False)
        except Exception as exc:
            raise EncoderError(f'ImageNet weights for {arch} are not cached and could not be downloaded ({exc}); '
                               f'pass a local checkpoint path instead (e.g. --diff_encoder_weights '
                               f'/path/to/{arch}.pth)') from exc
        source = f'torchvision {arch} ImageNet'
    elif weights == 'random':
        state, source = None, f'random {arch} (seed {seed})'
    else:
        if not os.path.isfile(weights):
            raise EncoderError(f'ResNet checkpoint {weights} not found')
        state = torch.load(weights, map_location='cpu', weights_only=True)
        if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
            state = state['state_dict']
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


FP_ENCODERS = ('SimCLR', 'CLIP', 'classifier', 'CC', 'raw', 'features')
HUB_ENCODERS = ('timm', 'open_clip')  # any timm or OpenCLIP model: utils/hub_encoders.py
FP_ENCODERS += HUB_ENCODERS


def default_simclr_path(dataset, inputs_dir=None):
    """The authors' published SimCLR encoder of `dataset`, fetched and verified (utils/published.py)."""
    name = f'SimCLR_128_{dataset}'
    if not is_published(name):
        raise EncoderError(f'no published SimCLR encoder for {dataset} (there is one for cifar10 and one for '
                           f'cifar100): pass --fp_checkpoint PATH, e.g. one made by `python pretrain_SimCLR.py '
                           f'--dataset {dataset}`')
    return fetch(name, inputs_dir)


def build_fp_encoder(cfg, dataset, image_shape, mean, std, device):
    """The frozen f_p encoder named by --fp_encoder, on `device`."""
    if cfg.fp_encoder in HUB_ENCODERS:
        from utils.hub_encoders import load_hub_encoder
        return load_hub_encoder(cfg, device)
    if cfg.fp_encoder == 'SimCLR':
        path = cfg.fp_checkpoint or default_simclr_path(dataset, getattr(cfg, 'inputs_dir', None))
        encoder = load_simclr(path, device, mean, std)
    elif cfg.fp_encoder == 'CLIP':
        encoder = load_clip(cfg.CLIP_type, device, cfg.clip_download_root, cfg.clip_tower)
    elif cfg.fp_encoder == 'classifier':
        if not cfg.fp_checkpoint:
            raise EncoderError('--fp_encoder classifier needs --fp_checkpoint PATH (a torchvision-layout '
                               'classifier state dict, e.g. a ResNet-50 trained on the noisy data)')
        encoder = load_imagenet_resnet(cfg.fp_arch, cfg.fp_checkpoint, device)
    elif cfg.fp_encoder == 'CC':
        from utils.cc_net import load_cc  # it builds on FrozenEncoder, defined above
        encoder = load_cc(cfg.fp_checkpoint, device, getattr(cfg, 'inputs_dir', None))
    elif cfg.fp_encoder == 'raw':
        encoder = RawPixels(tuple(image_shape), mean, std).finish(device)
    elif cfg.fp_encoder == 'features':
        from utils.feature_file import load_feature_encoder  # imports this module
        encoder = load_feature_encoder(getattr(cfg, 'fp_features', None), device)
    else:
        raise EncoderError(f'unknown --fp_encoder {cfg.fp_encoder!r}; choose from {", ".join(FP_ENCODERS)}')
    encoder.bf16 = encoder.bf16 and cfg.precision == 'bf16'
    return encoder


@torch.no_grad()
def encode_all(encoder, images, batch_size=512, progress=True, desc='f_p features'):
    """Features of all images (uint8, any device), computed in batches on the encoder's device."""
    from tqdm import tqdm
    device = encoder.device
    out = torch.empty(len(images), encoder.dim, device=device)
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        out[start:start + len(batch)] = encoder.encode(batch)
    return out
