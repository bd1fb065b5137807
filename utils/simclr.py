"""SimCLR pre-training pieces: batched GPU augmentation, the NT-Xent loss and a kNN monitor.

The augmentations are SimCLR's CIFAR recipe applied to a whole uint8 batch at once on its device:
random resized crop (scale 0.08–1, aspect 3/4–4/3) with horizontal flip through one affine grid
sample, colour jitter (brightness, contrast, saturation 0.4, hue 0.1) with probability 0.8, and
grayscale with probability 0.2.
"""
import math

import torch
import torch.nn.functional as F

# RGB → YIQ and back: hue jitter is a rotation of the IQ chroma plane, a linear map per image.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_GRAY = torch.tensor([0.299, 0.587, 0.114])


def random_resized_crop_flip(images, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=None):
    """float N×3×H×W in [0, 1] → crops resized back to H×W (bilinear), half of them mirrored."""
    n, _, h, w = images.shape
    device = images.device
    rand = lambda *shape: torch.rand(*shape, device=device, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * rand(n)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * rand(n)
    aspect = torch.exp(log_r)
    cw = torch.sqrt(area * aspect).clamp(max=1.0)   # crop width as a fraction of the image
    ch = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (rand(n) * 2 - 1) * (1 - cw)                # centre, in [-1, 1] grid units
    cy = (rand(n) * 2 - 1) * (1 - ch)
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = cw * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, (n, 3, h, w), align_corners=False)
    return F.grid_sample(images, grid, mode='bilinear', padding_mode='reflection', align_corners=False)


def color_jitter(x, strength=0.4, hue=0.1, p=0.8, generator=None):
    """Brightness, contrast, saturation and hue jitter, each image its own factors (fixed order)."""
    n = x.shape[0]
    device = x.device
    rand = lambda *shape: torch.rand(*shape, device=device, generator=generator)
    apply = (rand(n) < p).view(n, 1, 1, 1)
    factor = lambda: (1 + (rand(n) * 2 - 1) * strength).view(n, 1, 1, 1)
    out = x * factor()
    mean = (out * _GRAY.to(device).view(1, 3, 1, 1)).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    out = (out - mean) * factor() + mean
    gray = (out * _GRAY.to(device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    out = (out - gray) * factor() + gray
    angle = (rand(n) * 2 - 1) * hue * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(n, 3, 3, device=device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    yiq = _YIQ.to(device)
    transform = torch.linalg.inv(yiq) @ rot @ yiq   # n × 3 × 3
    out = torch.einsum('nij,njhw->nihw', transform, out).clamp(0, 1)
    return torch.where(apply, out, x)


def random_grayscale(x, p=0.2, generator=None):
    n = x.shape[0]
    gray = (x * _GRAY.to(x.device).view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(x)
    pick = (torch.rand(n, device=x.device, generator=generator) < p).view(n, 1, 1, 1)
    return torch.where(pick, gray, x)


def simclr_view(images, mean, std, generator=None):
    """One augmented, normalised view of a uint8 batch."""
    x = images.float() / 255
    x = random_resized_crop_flip(x, generator=generator)
    x = random_grayscale(color_jitter(x, generator=generator), generator=generator)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def nt_xent(z1, z2, temperature=0.5):
    """SimCLR's normalised-temperature cross-entropy over the 2N views of a batch."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float('-inf'))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


@torch.no_grad()
def knn_monitor(train_features, train_labels, test_features, test_labels, n_class, k=200, temperature=0.1,
                chunk=1024):
    """Weighted kNN top-1 accuracy on frozen features (cosine similarity, weights exp(sim/τ))."""
    bank = F.normalize(train_features.float(), dim=1)
    correct = 0
    for start in range(0, len(test_features), chunk):
        q = F.normalize(test_features[start:start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(min(k, len(bank)), dim=1)
        votes = torch.zeros(len(q), n_class, device=q.device)
        votes.scatter_add_(1, train_labels[idx], torch.exp(sim / temperature))
        correct += int((votes.argmax(1) == test_labels[start:start + chunk]).sum())
    return correct / len(test_features)
