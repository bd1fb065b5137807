"""Raw pixels as f_p: no pre-trained encoder, for offline demos and ablations."""
import torch
import torch.nn.functional as F

from utils.data.images import normalize_images
from utils.encoders.base import FrozenEncoder


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
