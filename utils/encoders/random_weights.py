"""Encoder checkpoints with random weights, in the exact formats the real loaders read.

Speed does not depend on the weights, so timings of these are valid; tests use the tiny variants to
exercise the real loading code offline.
"""
import warnings

import torch

from utils.encoders.cc_net import CCEncoder
from utils.encoders.simclr import SimCLREncoder

# clip.model.CLIP arguments: embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
# context_length, vocab_size, transformer_width, transformer_heads, transformer_layers
CLIP_ARCHS = {
    'ViT-B/32': (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    'ViT-B/16': (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    'ViT-L/14': (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
    'tiny': (32, 32, 1, 64, 8, 8, 64, 64, 1, 1),
}


def _clip_model():
    with warnings.catch_warnings():  # the clip package imports pkg_resources
        warnings.simplefilter('ignore')
        import clip.model
    return clip.model


def random_clip_visual(arch, seed=0, layers=None):
    """The image tower of CLIP `arch` (clip.model.VisionTransformer) with random weights; `layers`: fewer
    blocks than the real tower has, every shape kept (for cheap tests of the block structure)."""
    clip_model = _clip_model()
    embed_dim, resolution, vision_layers, width, patch = CLIP_ARCHS[arch][:5]
    torch.manual_seed(seed)
    return clip_model.VisionTransformer(resolution, patch, width, layers or vision_layers, width // 64,
                                        embed_dim).eval()


def save_random_clip(arch, path, seed=0):
    """A CLIP state dict (fp16, as the released files) that `clip.load(path)` builds."""
    clip_model = _clip_model()
    torch.manual_seed(seed)
    model = clip_model.CLIP(*CLIP_ARCHS[arch])
    clip_model.convert_weights(model)
    torch.save(model.state_dict(), path)
    return path


def save_random_simclr(arch, path, seed=0):
    """A SimCLR checkpoint in the released layout: backbone under f.*, projection head under g.*."""
    torch.manual_seed(seed)
    torch.save(SimCLREncoder(arch).state_dict(), path)
    return path


def save_random_cc(path, seed=0):
    """A CC classifier state dict in the layout of the published CC_net.pt (see utils/encoders/cc_net.py)."""
    torch.manual_seed(seed)
    torch.save(CCEncoder().state_dict(), path)
    return path
