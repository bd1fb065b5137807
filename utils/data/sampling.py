"""The class-balanced draw of the authors' Clothing1M and WebVision scripts (`--per_class N`).

Every epoch they rebuild the training set from N samples of each class, drawn afresh without
replacement (Clothing1M: 10,000 per class of the cc_select subset; WebVision: 500). Where a class
holds fewer than N samples their WebVision code lowers N to the smallest class's count (their
Clothing1M code stops with an error; its classes all hold more than 10,000), so here too every
class contributes min(N, smallest class) samples: the draw stays balanced.

The draw is a pure function of (labels, N, seed, epoch): every rank of a torchrun job computes the
same one, and a resumed run redraws exactly the epoch it continues.
"""
import torch


def per_class_count(labels, per_class):
    """How many samples each present class contributes: min(per_class, the smallest class)."""
    counts = torch.bincount(labels.cpu())
    return min(per_class, int(counts[counts > 0].min()))


def balanced_draw(labels, per_class, seed, epoch):
    """Indices of `per_class_count` samples of every class present in `labels`, drawn without
    replacement from (seed, epoch) alone, grouped by class (the caller shuffles); every index
    when per_class is 0."""
    labels = labels.cpu().long()
    if per_class <= 0:
        return torch.arange(labels.shape[0])
    n = per_class_count(labels, per_class)
    g = torch.Generator().manual_seed(seed * 7919 + epoch * 104729 + 17)  # its own stream: see docstring
    by_class = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels).tolist()
    picks, start = [], 0
    for count in counts:
        if count:
            members = by_class[start:start + count]
            picks.append(members[torch.randperm(count, generator=g)[:n]])
        start += count
    return torch.cat(picks)
