"""A run's epoch schedule: its learning rate at every step and the epochs it is evaluated at (the
engine trains by it; a --k_select model trial is cut to end at one of its evaluations)."""
import math


def learning_rate(epoch, peak, warmup_epochs, horizon):
    """Linear warm-up to `peak`, then half-cosine decay to 0 over `horizon` epochs (fractional epoch)."""
    if epoch < warmup_epochs:
        return peak * epoch / warmup_epochs
    return peak * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (horizon - warmup_epochs)))


def is_eval_epoch(epoch, eval_from, eval_every):
    """The authors' rule: every `eval_every` epochs (0-based) from epoch `eval_from` on (their CIFAR script:
    the end of warm-up; their Food-101N, Clothing1M and WebVision scripts: the first epoch)."""
    return epoch >= eval_from and epoch % eval_every == 0
