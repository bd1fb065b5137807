"""Images as uint8 N×3×H×W tensors on their device: the per-channel scalings the package uses, and
normalisation, memory layout and the CIFAR training augmentation done there in whole batches.
"""
import functools

import torch
import torch.nn.functional as F

# Per-channel mean and std of the pixel scalings the package uses, in one place.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet models and the image-file datasets
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLOTHING1M_MEAN = (0.6959, 0.6537, 0.6371)  # Clothing1M's own statistics: the CC classifier was trained with them
CLOTHING1M_STD = (0.3113, 0.3192, 0.3214)


def random_crop_flip(images, padding=4, generator=None):
    """RandomCrop(size, padding) with zero padding and RandomHorizontalFlip, for a uint8 batch.

    One gather per batch instead of per-image PIL work: each image gets its own offsets and flip.
    """
    n, c, h, w = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=device, generator=generator)
    flip = torch.rand(n, 1, device=device, generator=generator) < 0.5
    rows = dy + torch.arange(h, device=device)
    cols_fwd = torch.arange(w, device=device)
    cols = dx + torch.where(flip, w - 1 - cols_fwd, cols_fwd)
    batch = torch.arange(n, device=device)[:, None, None, None]
    chan = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


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
