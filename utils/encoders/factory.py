"""The f_p encoder a run names (--fp_encoder): built here, from the concrete encoders' modules.

The base class (utils/encoders/base.py) knows no concrete encoder; each encoder's module builds on the
base; this module alone knows them all, so no module imports one that imports it back.
"""
from utils.encoders.cc_net import load_cc
from utils.encoders.clip import load_clip
from utils.encoders.feature_file import load_feature_encoder
from utils.encoders.hub import load_hub_encoder
from utils.encoders.imagenet import load_imagenet_resnet
from utils.encoders.pixels import RawPixels
from utils.encoders.simclr import load_simclr
from utils.errors import EncoderError
from utils.storage.published import fetch, is_published

HUB_ENCODERS = ('timm', 'open_clip')  # any timm or OpenCLIP model: utils/encoders/hub.py
FP_ENCODERS = ('SimCLR', 'CLIP', 'classifier', 'CC', 'raw', 'features') + HUB_ENCODERS


def default_simclr_path(dataset, inputs_dir=None):
    """The authors' published SimCLR encoder of `dataset`, fetched and verified (utils/storage/published.py)."""
    name = f'SimCLR_128_{dataset}'
    if not is_published(name):
        raise EncoderError(f'no published SimCLR encoder for {dataset} (there is one for cifar10 and one for '
                           f'cifar100): pass --fp_checkpoint PATH, e.g. one made by `python pretrain_SimCLR.py '
                           f'--dataset {dataset}`')
    return fetch(name, inputs_dir)


def build_fp_encoder(cfg, dataset, image_shape, mean, std, device):
    """The frozen f_p encoder named by --fp_encoder, on `device`."""
    if cfg.fp_encoder in HUB_ENCODERS:
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
        encoder = load_cc(cfg.fp_checkpoint, device, getattr(cfg, 'inputs_dir', None))
    elif cfg.fp_encoder == 'raw':
        encoder = RawPixels(tuple(image_shape), mean, std).finish(device)
    elif cfg.fp_encoder == 'features':
        encoder = load_feature_encoder(getattr(cfg, 'fp_features', None), device)
    else:
        raise EncoderError(f'unknown --fp_encoder {cfg.fp_encoder!r}; choose from {", ".join(FP_ENCODERS)}')
    encoder.bf16 = encoder.bf16 and cfg.precision == 'bf16'
    return encoder
