"""A run's epoch schedule: its learning rate at every step and the epochs it is evaluated at (the
engine trains by it; a --k_select model trial is cut to end at one of its evaluations)."""
import math


def learning_rate(epoch, peak, warmup_epochs, horizon):
    """Linear warm-up to `peak`, then half-cosine decay to 0 over `horizon` epochs (fractional epoch)."""
    if epoch < warmup_epochs:
        return peak * epoch / warmup_epochs
    return peak * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (horizon - warmup_epochs)))


def is_eval_epoch(epoch, warmup_epochs, eval_every):
    """The authors' rule: every `eval_every` epochs (0-based) once warm-up is over."""
    return epoch >= warmup_epochs and epoch % eval_every == 0
