"""f_p from the model hubs: any timm image model (pooled pre-logits features) or an OpenCLIP image tower.

    --fp_encoder timm --fp_model vit_base_patch14_dinov2.lvd142m
    --fp_encoder open_clip --fp_model ViT-B-16-SigLIP --fp_pretrained webli

Weights come from the Hugging Face hub through the libraries' own downloaders and caches when online,
or from `--fp_checkpoint PATH` (the model's .safetensors/.bin/.pth file, read without unpickling
code) offline; where the hub cannot be reached, a copied hub cache is read at once. Preprocessing follows the
model's own pretrained configuration: its input size, interpolation and mean/std (timm's
resolve_data_config, OpenCLIP's preprocess config). The images arrive already decoded, resized and
centre-cropped to --image_size; set it to the model's input size when that is larger than 224 (a run
whose model wants more says so as it starts).
"""
import contextlib
import importlib
import logging
import os
import re
import socket
import urllib.request
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

from utils.data.images import normalize_images
from utils.encoders.base import FrozenEncoder
from utils.errors import EncoderError

PACKAGES = {'timm': 'timm', 'open_clip': 'open_clip_torch'}  # module → PyPI name


def _package(module):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EncoderError(f'--fp_encoder {module} needs the {PACKAGES[module]} package: '
                           f'pip install {PACKAGES[module]}') from exc


class HubEncoder(FrozenEncoder):
    """A hub model's image network; it resizes (the model's interpolation, antialiased) and normalises
    the uint8 images itself; features are L2-normalised. `dim` is measured on a dummy batch:
    pre-logits widths vary by family."""

    def __init__(self, library, model_name, net, input_size, mean, std, interpolation):
        super().__init__()
        self.name = f'{library}-' + re.sub(r'[^A-Za-z0-9._-]+', '-', model_name)  # also a file-name part
        self.model_name, self.net = model_name, net.eval()
        self.input_size = tuple(int(s) for s in input_size)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.interpolation = interpolation if interpolation in ('bilinear', 'bicubic', 'nearest') else 'bicubic'
        with torch.no_grad():
            self.dim = self.features(torch.zeros(1, 3, *self.input_size)).shape[1]

    def preprocess(self, images):
        x = images.float()
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode=self.interpolation,
                              antialias=self.interpolation != 'nearest').clamp_(0, 255)
        return normalize_images(x, self.mean, self.std)

    def features(self, x):
        out = self.net(x)
        out = out[0] if isinstance(out, (tuple, list)) else out  # CoCa's tower: (pooled, tokens)
        # unit norm, as SimCLR's: retrieval is then cosine, and hub features (norms of tens) do not
        # swamp y_t in the denoiser's first layer
        return F.normalize(torch.flatten(out, 1), dim=-1)

    def describe(self):
        return {**super().describe(), 'model': self.model_name, 'input_size': list(self.input_size),
                'interpolation': self.interpolation}


def timm_encoder(net, model_name):
    """Wrap a timm model built with num_classes=0, preprocessing from its pretrained config."""
    from timm.data import resolve_data_config
    cfg = resolve_data_config(model=net)
    return HubEncoder('timm', model_name, net, cfg['input_size'][1:], cfg['mean'], cfg['std'], cfg['interpolation'])


def _reachable(host, port=443, scheme='https', timeout_s=3):
    proxies = urllib.request.getproxies()
    if (proxies.get(scheme) or proxies.get('all')) and not urllib.request.proxy_bypass(host):
        return True  # reached through a proxy: only the request itself can tell
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_cache_when_offline():
    """Inside the block, where the hub's host cannot be reached, the hub libraries read their cache at once
    and quietly: offline they would retry each request for about a minute, logging each retry, before
    reading the cache or failing. Yields the unreachable host, or None (online, or HF_HUB_OFFLINE set)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield None
        return
    endpoint = urlparse(constants.ENDPOINT)  # huggingface.co, or the mirror HF_ENDPOINT names
    host, port = endpoint.hostname, endpoint.port or (80 if endpoint.scheme == 'http' else 443)
    if constants.HF_HUB_OFFLINE or _reachable(host, port, endpoint.scheme):
        yield None
        return
    constants.HF_HUB_OFFLINE = True
    logging.disable(logging.CRITICAL)  # the libraries' retry and failure logs; the package logs nothing
    try:
        yield host
    finally:
        constants.HF_HUB_OFFLINE = False
        logging.disable(logging.NOTSET)


def load_timm(model_name, checkpoint=None):
    """Any timm image model by name (an `arch.tag` name picks the weights), hub weights or a local file."""
    timm = _package('timm')
    if not model_name.startswith('hf-hub:') and not timm.is_model(model_name):
        raise EncoderError(f'unknown timm model {model_name!r}; list them with python -c "import timm; '
                           f'print(timm.list_models(pretrained=True))"')
    unreachable = None
    try:
        if checkpoint:
            net = timm.create_model(model_name, pretrained=False, num_classes=0)
            net.load_state_dict(_without_classifier(net, _checkpoint(checkpoint)), strict=True)
        else:  # with its classifier, so timm loads strictly; then the classifier goes
            with hub_cache_when_offline() as unreachable:
                net = timm.create_model(model_name, pretrained=True)
            net.reset_classifier(0)
    except Exception as exc:
        raise _weights_error('timm', model_name, checkpoint, exc, unreachable) from exc
    encoder = timm_encoder(net, model_name)
    encoder.source = os.path.abspath(checkpoint) if checkpoint else f'timm hub {model_name}'
    return encoder


def _without_classifier(net, path):
    """A timm-format weights file's tensors (safetensors, or torch.load with weights_only), less the
    classifier that num_classes=0 removed from `net`."""
    from timm.models import load_state_dict
    state = load_state_dict(path)
    heads = net.pretrained_cfg.get('classifier') or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return {k: v for k, v in state.items() if not k.startswith(tuple(h + '.' for h in heads))}


def open_clip_encoder(model, model_name):
    """Wrap an OpenCLIP model's image tower, preprocessing from its preprocess config."""
    import open_clip
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg['size'] if isinstance(cfg['size'], (tuple, list)) else (cfg['size'], cfg['size'])
    return HubEncoder('open_clip', model_name, model.visual, size, cfg['mean'], cfg['std'],
                      cfg.get('interpolation', 'bicubic'))


def load_open_clip(arch, tag=None, checkpoint=None):
    """An OpenCLIP model's image tower: ARCH with pretrained TAG from the hub, or ARCH from a local
    checkpoint (its preprocessing from TAG's config when given, else the architecture's)."""
    open_clip = _package('open_clip')
    if not arch.startswith('hf-hub:') and arch not in open_clip.list_models():
        raise EncoderError(f'unknown OpenCLIP architecture {arch!r}; list them with python -c "import open_clip; '
                           f'print(open_clip.list_pretrained())"')
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag and tag not in tags:
        raise EncoderError(f'OpenCLIP {arch} has no pretrained tag {tag!r}; choose from {", ".join(tags) or "none"}')
    if not (tag or checkpoint or arch.startswith('hf-hub:')):
        raise EncoderError(f'--fp_encoder open_clip needs --fp_pretrained TAG ({", ".join(tags) or "none known"}) '
                           f'or --fp_checkpoint PATH for {arch}')
    unreachable = None
    try:
        if checkpoint:
            cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
            preprocess = {k: cfg[k] for k in ('mean', 'std', 'interpolation', 'resize_mode') if cfg.get(k)}
            model = open_clip.create_model(arch, pretrained=None, force_preprocess_cfg=preprocess or None)
            open_clip.load_checkpoint(model, _checkpoint(checkpoint), strict=True, weights_only=True)
        else:
            with hub_cache_when_offline() as unreachable:
                model = open_clip.create_model(arch, pretrained=tag)
    except Exception as exc:
        raise _weights_error('open_clip', f'{arch} {tag or ""}'.strip(), checkpoint, exc, unreachable) from exc
    encoder = open_clip_encoder(model, arch if not tag else f'{arch}-{tag}')
    encoder.source = os.path.abspath(checkpoint) if checkpoint else f'open_clip hub {arch} {tag or ""}'.strip()
    return encoder


def _checkpoint(path):
    if not os.path.isfile(path):
        raise EncoderError(f'--fp_checkpoint {path} not found')
    return path


def _weights_error(library, model, checkpoint, exc, unreachable=None):
    reason = f'{type(exc).__name__}: {" ".join(str(exc).split())}'[:400]
    if checkpoint:
        return EncoderError(f'{checkpoint} does not load into {library} {model} ({reason}); pass that model\'s '
                            f'own weights file')
    if unreachable:
        return EncoderError(f'{library} weights for {model} are not in the Hugging Face cache and {unreachable} '
                            f'cannot be reached: pass the weights file as --fp_checkpoint PATH, or copy '
                            f'~/.cache/huggingface/hub from an online machine')
    return EncoderError(f'{library} weights for {model} are not cached and could not be downloaded ({reason}); '
                        f'pass the weights file as --fp_checkpoint PATH')


def load_hub_encoder(library, model, pretrained=None, checkpoint=None, device='cpu', bf16=True):
    """The f_p encoder of --fp_encoder timm|open_clip (`library`): `model` (--fp_model) with the weights tag
    `pretrained` (OpenCLIP) or the weights file `checkpoint`, frozen, on `device`."""
    if not model:
        example = 'vit_small_patch14_dinov2.lvd142m' if library == 'timm' else 'ViT-B-32 --fp_pretrained openai'
        raise EncoderError(f'--fp_encoder {library} needs --fp_model NAME (e.g. --fp_model {example})')
    if library == 'timm':
        encoder = load_timm(model, checkpoint)
    else:
        encoder = load_open_clip(model, pretrained, checkpoint)
    encoder.bf16 = bf16
    return encoder.finish(device)
