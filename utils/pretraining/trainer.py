"""One SimCLR step and what it needs: the NT-Xent loss, the learning-rate schedule, the images held on
the device (resized for tests), the step captured as a CUDA graph, the state a --resume restores and
state.pt read back, and the weighted-kNN monitor of the frozen features."""
import math
import os
import time

import torch
import torch.nn.functional as F

from utils.data.images import channels_last
from utils.encoders.base import encode_all
from utils.encoders.simclr import SimCLREncoder
from utils.errors import ResumeRefused, quoted_error
from utils.networks import RESNETS
from utils.pretraining.augment import simclr_views
from utils.runs.folders import field_problems, is_int, is_number, tensor_dict
from utils.runtime.devices import load_optimizer_state
from utils.runtime.graphs import CAPTURE_ERRORS
from utils.runtime.randomness import is_rng_state, rng_state, seed_everything, set_rng_state
from utils.storage.loading import load_torch


STATE_FORMAT = 1


def nt_xent(z1, z2, temperature=0.5):
    """SimCLR's normalised-temperature cross-entropy over the 2N views of a batch."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float('-inf'))
    target = torch.arange(2 * n, device=z.device).roll(n)  # view i's positive is the other view of image i
    return F.cross_entropy(sim, target)


@torch.no_grad()
def knn_monitor(train_features, train_labels, test_features, test_labels, n_class, k=200, temperature=0.1,
                chunk=1024):
    """Weighted kNN top-1 accuracy on frozen features (cosine similarity, weights exp(sim/τ))."""
    bank = F.normalize(train_features.float(), dim=1)
    correct = torch.zeros((), dtype=torch.long, device=bank.device)
    for start in range(0, len(test_features), chunk):
        q = F.normalize(test_features[start:start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(min(k, len(bank)), dim=1)
        votes = torch.zeros(len(q), n_class, device=q.device)
        votes.scatter_add_(1, train_labels[idx], torch.exp(sim / temperature))
        correct += (votes.argmax(1) == test_labels[start:start + chunk]).sum()
    return int(correct) / len(test_features)


def sgd_lr(step, total, warmup, peak):
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def resize(images, size):
    if size is None or images.shape[-1] == size:
        return images
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode='bilinear', antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


class Pretrainer:
    def __init__(self, args, splits, device):
        self.args, self.device = args, device
        self.mean, self.std = splits.mean, splits.std
        # unlabelled pre-training on every training image (the validation images too: no labels used)
        n = args.n_images
        self.images = resize(torch.cat([splits.train_images, splits.val_images])[:n], args.image_size).to(device)
        self.monitor = (torch.cat([splits.train_clean, splits.val_labels])[:n].to(device),
                        resize(splits.test_images, args.image_size), splits.test_labels.to(device), splits.n_class)
        seed_everything(args.seed)
        self.model = channels_last(SimCLREncoder(args.arch, mean=splits.mean, std=splits.std).to(device), device)
        self.lr = args.lr or 0.06 * args.batch_size / 256
        cuda = device.type == 'cuda'
        # on CUDA one fused kernel updates every weight, its learning rate read from a device tensor (set
        # before each step, read inside the graph); on the CPU the update stays torch's default
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9, weight_decay=args.weight_decay,
                                   fused=True if cuda else None)
        self.lr_now = torch.tensor(self.lr, device=device) if cuda else None
        self._use_lr_tensor()
        self.graph = GraphedStep(self) if cuda and args.cuda_graph else None
        self.steps_per_epoch = len(self.images) // args.batch_size
        self.epoch, self.history, self.elapsed = 0, [], 0.0

    def _use_lr_tensor(self):
        if self.lr_now is not None:
            for group in self.opt.param_groups:
                group['lr'] = self.lr_now

    def set_lr(self, step):
        value = sgd_lr(step, self.args.nepoch * self.steps_per_epoch, self.args.warmup_epochs * self.steps_per_epoch,
                       self.lr)
        if self.lr_now is not None:
            self.lr_now.fill_(value)
        else:
            for group in self.opt.param_groups:
                group['lr'] = value

    def update(self, idx):
        """One SGD step on the images `idx` (a device tensor): both views, NT-Xent, backward, update.
        The loss stays on the device. What a CUDA graph captures: no host sync, static shapes."""
        views = channels_last(simclr_views(self.images[idx], self.mean, self.std))
        cuda = self.device.type == 'cuda'
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cuda, cache_enabled=False):
            z = self.model.g(torch.flatten(self.model.f(views), 1))
        loss = nt_xent(*z.float().chunk(2), temperature=self.args.temperature)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def step(self, idx, step):
        self.set_lr(step)
        return self.graph.run(idx) if self.graph is not None else self.update(idx)

    def train_epoch(self):
        """(mean loss, seconds) of one epoch; the loss is read once, at its end."""
        started = time.perf_counter()
        self.model.train()
        order = torch.randperm(len(self.images), device=self.device)
        total = torch.zeros((), device=self.device)
        for i in range(self.steps_per_epoch):
            idx = order[i * self.args.batch_size:(i + 1) * self.args.batch_size]
            total += self.step(idx, self.epoch * self.steps_per_epoch + i)
        loss = float(total) / self.steps_per_epoch
        if not math.isfinite(loss):
            raise FloatingPointError(f'SimCLR loss became non-finite in epoch {self.epoch}; lower --lr')
        return loss, time.perf_counter() - started

    def knn_accuracy(self):
        self.model.eval()
        labels, test_images, test_labels, n_class = self.monitor
        train_features = encode_all(self.model, self.images, batch_size=1024, progress=False)
        test_features = encode_all(self.model, test_images, batch_size=1024, progress=False)
        return knn_monitor(train_features, labels, test_features, test_labels, n_class)

    def state(self):
        optimizer = self.opt.state_dict()
        for group in optimizer['param_groups']:  # saved as a number, whatever holds it while training
            group['lr'] = float(group['lr'])
        return {'format_version': STATE_FORMAT, 'args': vars(self.args), 'epoch': self.epoch,
                'model': self.model.state_dict(), 'optimizer': optimizer, 'history': self.history,
                'rng': rng_state(self.device), 'elapsed_s': self.elapsed}

    def restore(self, state):
        self.model.load_state_dict(state['model'])
        load_optimizer_state(self.opt, state['optimizer'])  # fused, with the lr tensor, where this device runs so
        self.epoch, self.history, self.elapsed = state['epoch'], state['history'], state['elapsed_s']
        set_rng_state(state['rng'], self.device)


class GraphedStep:
    """Pretrainer.update captured once as a CUDA graph and replayed for every later step: the same
    kernels each step (every batch holds batch_size images), none of the Python and launch cost per
    kernel. The first WARMUP steps run eagerly on a side stream (cuDNN autotuning, the optimiser's
    momentum buffers); they are real steps of the run, like every replay."""
    WARMUP = 3

    def __init__(self, trainer):
        self.trainer, self.eager_steps, self.graph = trainer, 0, None
        self.idx = torch.zeros(trainer.args.batch_size, dtype=torch.long, device=trainer.device)
        self.loss = None

    def run(self, idx):
        self.idx.copy_(idx)
        if self.graph is None and self.eager_steps < self.WARMUP:
            self.eager_steps += 1
            side = torch.cuda.Stream(self.trainer.device)
            side.wait_stream(torch.cuda.current_stream(self.trainer.device))
            with torch.cuda.stream(side):
                loss = self.trainer.update(self.idx)
            torch.cuda.current_stream(self.trainer.device).wait_stream(side)
            return loss
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            self.trainer.opt.zero_grad(set_to_none=True)  # the captured backward then writes the gradients afresh
            with torch.cuda.graph(self.graph, capture_error_mode=CAPTURE_ERRORS):
                self.loss = self.trainer.update(self.idx)
        self.graph.replay()  # capturing ran nothing: the first replay is this step
        return self.loss.clone()


def load_state(run_dir):
    """The state.pt of a pre-training run, checked for its format and contents (state_problems); its flags
    as of today's names."""
    path = os.path.join(run_dir, 'state.pt')
    if not os.path.isfile(path):
        raise ResumeRefused(f'--resume {run_dir}: no state.pt there; start a new run')
    state = load_torch(path, 'SimCLR pre-training state')
    if not isinstance(state, dict) or state.get('format_version') != STATE_FORMAT \
            or not isinstance(state.get('args'), dict):
        raise ResumeRefused(f'{path} is not a SimCLR pre-training state of format {STATE_FORMAT}; start a new run')
    saved = dict(state['args'])
    saved.setdefault('nepoch', saved.pop('epochs', None))  # a state saved when the flag was --epochs
    problems = state_problems(state, saved.get('arch'))
    if problems:
        raise ResumeRefused(f'{path} is damaged or was edited ({"; ".join(problems[:3])}); it cannot be resumed: '
                            f'start a new run')
    return state, saved


# what a resume restores, and what each must be (a state the package wrote always is)
STATE_FIELDS = {
    'epoch': (lambda v: is_int(v) and v >= 0, 'an epoch count'), 'model': (tensor_dict, 'weights'),
    'optimizer': (lambda v: isinstance(v, dict) and isinstance(v.get('param_groups'), list)
                  and isinstance(v.get('state'), dict), "an optimiser's state"),
    'history': (lambda v: isinstance(v, list) and all(isinstance(r, dict) and is_int(r.get('epoch'))
                                                      and is_number(r.get('minutes')) for r in v),
                'a list of epochs'),
    'rng': (is_rng_state, 'random states'),
    'elapsed_s': (is_number, 'seconds'),
}


def state_problems(state, arch):
    """What in a pre-training state is missing, of the wrong kind, or does not fit the network its --arch
    builds, as short phrases: checked before the data is read, where restore() would fail with a traceback."""
    problems = field_problems(state, STATE_FIELDS)
    if problems or arch not in RESNETS:
        return problems or [f'args.arch is {arch!r}, not one of {", ".join(RESNETS)}']
    model = SimCLREncoder(arch)
    try:
        model.load_state_dict(state['model'])
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).load_state_dict(state['optimizer'])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # a weight missing, unexpected or of another shape
        return [f'it does not fit a SimCLR {arch} ({quoted_error(exc)})']
    return []
