"""Batched image augmentation on the images' device (the CIFAR training transform)."""
import torch


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
