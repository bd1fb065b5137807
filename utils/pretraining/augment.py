"""SimCLR's two views of a batch, augmented on the images' device in whole batches.

The augmentation is the CIFAR pipeline of the SimCLR code whose model layout (`f`, `g`) the authors'
released encoders keep, as torchvision composes it:

    RandomResizedCrop(32)                                  scale 0.08–1, aspect 3/4–4/3, bilinear
    RandomHorizontalFlip(p=0.5)
    RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)  the four adjustments in a random order
    RandomGrayscale(p=0.2)

Each transform draws its parameters for a whole batch at once, from the distributions torchvision's
`get_params` draws them from, and applies them with batched tensor ops: no per-image Python, no
host sync, the same kernels for every batch (so a training step can be captured as a CUDA graph).
For given parameters each image comes out as torchvision's functional ops make it on float pixels
(tests/test_simclr.py); the PIL path the original code ran on rounds to 8 bits after each op.
"""
import math

import torch

from utils.data.images import channel_constant


def _uniform(shape, low, high, device, generator):
    return low + (high - low) * torch.rand(shape, device=device, generator=generator)


# ---- random resized crop and flip -------------------------------------------------------------------

def crop_params(n, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), device='cpu', generator=None,
                attempts=10):
    """RandomResizedCrop.get_params for n images: (top, left, crop height, crop width), long tensors.

    Up to `attempts` draws of an area fraction (uniform in `scale`) and a log-uniform aspect ratio; the
    first whose rounded box fits the image is taken, at a uniform position; if none fits, the centred
    box of the whole image at the nearest allowed aspect ratio."""
    target = height * width * _uniform((n, attempts), *scale, device, generator)
    aspect = torch.exp(_uniform((n, attempts), math.log(ratio[0]), math.log(ratio[1]), device, generator))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.float().argmax(1, keepdim=True)  # the first attempt that fits (0 if none does)
    found = fits.any(1)
    fallback_h, fallback_w = _centre_box(height, width, ratio)
    h = torch.where(found, h.gather(1, first)[:, 0], float(fallback_h))
    w = torch.where(found, w.gather(1, first)[:, 0], float(fallback_w))
    top = torch.where(found, torch.floor(torch.rand(n, device=device, generator=generator) * (height - h + 1)),
                      torch.div(height - h, 2, rounding_mode='floor'))
    left = torch.where(found, torch.floor(torch.rand(n, device=device, generator=generator) * (width - w + 1)),
                       torch.div(width - w, 2, rounding_mode='floor'))
    return top.long(), left.long(), h.long(), w.long()


def _centre_box(height, width, ratio):
    """RandomResizedCrop's fallback box size: the whole image, narrowed to the nearest allowed aspect."""
    if width / height < min(ratio):
        return int(round(width / min(ratio))), width
    if width / height > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def _resize_matrix(start, length, size, in_size):
    """n × size × in_size bilinear weights that resize the span [start, start + length) of each image's
    axis to `size` pixels: half-pixel centres, edges clamped to the span. This is torch's (and
    torchvision's) bilinear resize of the cropped span whenever it is enlarged or kept, where resizing
    with and without antialiasing agree."""
    n = start.shape[0]
    u = torch.arange(size, device=start.device, dtype=torch.float32)
    src = ((u + 0.5) * (length[:, None].float() / size) - 0.5).clamp(min=0)
    low = src.floor()
    frac = src - low
    low = low.long()
    high = torch.minimum(low + 1, length[:, None] - 1)
    weights = torch.zeros(n, size, in_size, device=start.device)
    weights.scatter_add_(2, (start[:, None] + low)[..., None], (1 - frac)[..., None])
    weights.scatter_add_(2, (start[:, None] + high)[..., None], frac[..., None])
    return weights


def resized_crop_flip(x, top, left, height, width, flip):
    """Each image's box resized back to the image's size (bilinear), mirrored where `flip`: two batched
    matrix products, rows then columns."""
    n, _, h, w = x.shape
    rows = _resize_matrix(top, height, h, h)
    cols = _resize_matrix(left, width, w, w)
    cols = torch.where(flip[:, None, None], cols.flip(1), cols)
    return torch.matmul(torch.matmul(rows[:, None], x), cols.transpose(1, 2)[:, None])


def random_resized_crop_flip(x, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=None):
    """RandomResizedCrop(size of the images, scale, ratio) and RandomHorizontalFlip(0.5) of a float batch."""
    n, _, h, w = x.shape
    top, left, height, width = crop_params(n, h, w, scale, ratio, x.device, generator)
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    return resized_crop_flip(x, top, left, height, width, flip)


# ---- colour jitter and grayscale --------------------------------------------------------------------

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # torchvision's ColorJitter numbers them so


def grayscale(x):
    """n × 1 × H × W luma, with torchvision's rgb_to_grayscale weights and order of operations."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def jitter_params(n, strength=0.4, hue=0.1, p=0.8, device='cpu', generator=None):
    """RandomApply([ColorJitter(strength, strength, strength, hue)], p) for n images: whether it applies,
    the order of the four adjustments (a uniform permutation each), the brightness, contrast and
    saturation factors (uniform in [max(0, 1 − strength), 1 + strength]) and the hue shift (uniform in
    [−hue, hue])."""
    return {'apply': torch.rand(n, device=device, generator=generator) < p,
            'order': torch.rand(n, 4, device=device, generator=generator).argsort(1),
            'factors': _uniform((n, 3), max(0.0, 1 - strength), 1 + strength, device, generator),
            'hue': _uniform(n, -hue, hue, device, generator)}


def color_jitter_with(x, apply, order, factors, hue):
    """The colour jitter of `jitter_params` applied: each image's four adjustments in its own order,
    each clamped to [0, 1] as torchvision's."""
    out = x
    for position in range(4):
        out = _adjust(out, order[:, position], factors, hue)
    return torch.where(apply.view(-1, 1, 1, 1), out, x)


def _adjust(x, op, factors, hue):
    """One adjustment per image, `op` naming which: brightness, contrast and saturation blend the image
    with black, its mean luma or its luma by the image's factor; hue turns its hue."""
    gray = grayscale(x)
    which = op.view(-1, 1, 1, 1)
    target = torch.where(which == BRIGHTNESS, 0.0,
                         torch.where(which == CONTRAST, gray.mean((1, 2, 3), keepdim=True), gray))
    factor = factors.gather(1, op.clamp(max=SATURATION)[:, None]).view(-1, 1, 1, 1)
    blended = (factor * x + (1.0 - factor) * target).clamp_(0, 1)
    return torch.where(which == HUE, adjust_hue(x, hue), blended)


def adjust_hue(x, shift):
    """Each image's hue turned by its `shift` (a fraction of a turn), through HSV as torchvision's."""
    r, g, b = x.unbind(1)
    value = x.amax(1)
    chroma = value - x.amin(1)
    saturation = chroma / torch.where(chroma == 0, 1.0, value)
    c = torch.where(chroma == 0, 1.0, chroma)
    h = torch.where(value == r, (g - b) / c, torch.where(value == g, (b - r) / c + 2.0, (r - g) / c + 4.0))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    h = torch.remainder(h + shift.view(-1, 1, 1), 1.0)
    # HSV → RGB: channel n ∈ (5, 3, 1) for (r, g, b) is v − v·s·clamp(min(k, 4 − k), 0, 1), k = (n + 6h) mod 6
    k = torch.remainder(channel_constant((5.0, 3.0, 1.0), x.device) + 6.0 * h[:, None], 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0, 1)
    return value[:, None] - (value * saturation)[:, None] * ramp


def random_grayscale(x, p=0.2, generator=None):
    pick = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(pick.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)


def simclr_views(images, mean, std, views=2, generator=None):
    """`views` augmented, normalised views of a uint8 batch, stacked: rows [i·n, (i+1)·n) are view i."""
    x = (images.float() / 255).repeat(views, 1, 1, 1)
    x = random_resized_crop_flip(x, generator=generator)
    x = color_jitter_with(x, **jitter_params(len(x), device=x.device, generator=generator))
    x = random_grayscale(x, generator=generator)
    return (x - channel_constant(mean, x.device)) / channel_constant(std, x.device)
