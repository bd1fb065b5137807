"""An exponential moving average of the trained weights (--ema_decay), the weights evaluated.

Why: at the authors' learning rate the denoiser's validation accuracy swings by several points
from one evaluation to the next (their CIFAR cosine horizon is 1000 epochs, so a 200-epoch run ends
near the peak rate); the average of the recent weights removes that noise without more epochs.

The decay ramps up as (1 + n) / (10 + n) after n updates, capped at --ema_decay, so a short run
averages over its recent past rather than over its random initialisation. Floating-point buffers
(BatchNorm's running statistics) are averaged too; integer ones (their batch counters) copied. A frozen
parameter (--freeze_diff_encoder) never moves: the average keeps its copy and spends nothing on it.
"""
import copy

import torch


class WeightAverage:
    def __init__(self, model, decay):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).requires_grad_(False)
        # (stored in bf16, a frozen network's state dict holds float32 copies: lerped, they would only cost)
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        pairs = [(a, w) for (name, a), w in zip(self.model.state_dict().items(), model.state_dict().values())
                 if name not in frozen]
        self.floats = [p for p in pairs if p[0].is_floating_point()]
        self.others = [p for p in pairs if not p[0].is_floating_point()]

    def rate(self):
        """The weight of the trained model's current state in the next update."""
        return 1.0 - min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self):
        """Move the average towards the trained weights (the tensors `model` held when it was made,
        updated in place by the optimiser and load_state_dict)."""
        torch._foreach_lerp_([a for a, _ in self.floats], [w for _, w in self.floats], self.rate())
        for a, w in self.others:
            a.copy_(w)
        self.updates += 1

    def state_dict(self):
        return {'weights': self.model.state_dict(), 'updates': self.updates}

    def load_state_dict(self, state):
        self.model.load_state_dict(state['weights'])
        self.updates = state['updates']


def evaluated_weights(ckpt):
    """The weights a checkpoint's run evaluates with: the average where it kept one."""
    return ckpt['ema']['weights'] if ckpt.get('ema') else ckpt['model']
