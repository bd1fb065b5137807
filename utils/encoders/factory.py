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
from utils.storage.published import fetch, is_published, recognise

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


def build_fp_encoder(name, device='cpu', *, dataset=None, image_shape=None, mean=None, std=None, checkpoint=None,
                     clip_type='ViT-L/14', clip_download_root=None, clip_tower='fused', arch='resnet50', model=None,
                     pretrained=None, inputs_dir=None, bf16=True):
    """The frozen f_p encoder `name` (--fp_encoder), on `device`. `checkpoint`: its file (a SimCLR or CC
    checkpoint, a classifier's, hub weights, or the .npz of a features file); SimCLR's default is the
    authors' published encoder of `dataset`, fetched into `inputs_dir`; `raw` reads `image_shape` pixels
    normalised with `mean`/`std`. `bf16`: image networks in bf16 on CUDA."""
    if name in HUB_ENCODERS:
        return load_hub_encoder(name, model, pretrained, checkpoint, device, bf16)
    if name == 'SimCLR':
        encoder = load_simclr(checkpoint or default_simclr_path(dataset, inputs_dir), device, mean, std)
    elif name == 'CLIP':
        encoder = load_clip(clip_type, device, clip_download_root, clip_tower)
    elif name == 'classifier':
        if not checkpoint:
            raise EncoderError('--fp_encoder classifier needs --fp_checkpoint PATH (a torchvision-layout '
                               'classifier state dict, e.g. a ResNet-50 trained on the noisy data)')
        encoder = load_imagenet_resnet(arch, checkpoint, device)
    elif name == 'CC':
        encoder = load_cc(checkpoint, device, inputs_dir)
    elif name == 'raw':
        encoder = RawPixels(tuple(image_shape), mean, std).finish(device)
    elif name == 'features':
        encoder = load_feature_encoder(checkpoint, device)
    else:
        raise EncoderError(f'unknown --fp_encoder {name!r}; choose from {", ".join(FP_ENCODERS)}')
    if checkpoint and name in ('SimCLR', 'CC'):  # the authors' published file given by path: recorded as read
        recognise(checkpoint)
    encoder.bf16 = encoder.bf16 and bf16
    return encoder
