"""A fast supervised image classifier trainer: the PMD η classifier and the "Standard" baseline.

Images stay uint8 on the device; each batch is augmented there (crop + flip), normalised and run
under bf16 autocast with channels-last on CUDA. SGD with momentum, cosine learning rate.
"""
import math
import time

import torch
import torch.nn.functional as F

from utils.data.images import channels_last, normalize_images, random_crop_flip
from utils.errors import ResumeRefused, quoted_error
from utils.networks import CLASSIFIERS
from utils.runtime.progress import progress_bar


def build_classifier(arch, n_class):
    if arch not in CLASSIFIERS:
        raise ValueError(f'unknown classifier {arch!r}; choose from {", ".join(sorted(CLASSIFIERS))}')
    return CLASSIFIERS[arch](n_class)


def _autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda')


@torch.no_grad()
def predict_proba(model, images, mean, std, batch_size=1000):
    """Softmax class probabilities for uint8 images (on the model's device), float32 N × C."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = channels_last(normalize_images(images[start:start + batch_size].to(device), mean, std))
        with _autocast(device):
            out.append(F.softmax(model(x).float(), dim=1))
    return torch.cat(out)


def classify_standard(images, classifier, mean, std, batch_size=1000):
    """The "Standard" column of the speed table: a plain classifier's argmax."""
    return predict_proba(classifier, images, mean, std, batch_size).argmax(1)


def accuracy(model, images, labels, mean, std):
    return float((predict_proba(model, images, mean, std).argmax(1).cpu() == labels.cpu()).float().mean())


def fit_classifier(images, labels, n_class, mean, std, arch='preact_resnet34', epochs=25, batch_size=128,
                   lr=0.1, weight_decay=5e-4, device='cpu', seed=0, val=None, progress=True, log=print,
                   state=None, save=None):
    """Cross-entropy training. With `val=(images, labels)` the weights of the best validation epoch
    are returned (model selection on the clean validation split); otherwise the final weights.
    `save(state)` is called after every epoch with what `state` takes to go on from it exactly (the
    weights, the optimiser, the best epoch's weights, the history, the random streams). Returns (model,
    history)."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model = channels_last(build_classifier(arch, n_class).to(device), device)
    images, labels = images.to(device), labels.to(device).long()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    steps_per_epoch = max(1, len(images) // batch_size)
    total = epochs * steps_per_epoch
    history, best, started, first = [], (-1.0, None), time.time(), 0
    if state is not None:
        first, history, best = _restore(state, model, opt, device)
        started -= history[-1]['elapsed_s'] if history else 0.0
    for epoch in progress_bar(range(first, epochs), desc=arch, disable=not progress, initial=first, total=epochs):
        model.train()
        order = torch.randperm(len(images), device=device)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group['lr'] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            x = channels_last(normalize_images(random_crop_flip(images[idx]), mean, std))
            with _autocast(device):
                loss = F.cross_entropy(model(x).float(), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        record = {'epoch': epoch, 'loss': float(loss.detach()), 'elapsed_s': round(time.time() - started, 2)}
        if val is not None:
            record['val_acc'] = accuracy(model, val[0], val[1], mean, std)
            if record['val_acc'] > best[0]:
                best = (record['val_acc'], {k: v.detach().clone() for k, v in model.state_dict().items()})
        history.append(record)
        if save is not None:
            save(_state(epoch + 1, model, opt, best, history, device))
    if val is not None:
        model.load_state_dict(best[1])
    return model, history


def _state(next_epoch, model, opt, best, history, device):
    return {'epoch': next_epoch, 'model': model.state_dict(), 'optimizer': opt.state_dict(), 'best_val': best[0],
            'best_weights': best[1], 'history': history, 'rng': torch.get_rng_state(),
            'device_rng': torch.cuda.get_rng_state(device) if device.type == 'cuda' else None}


def _restore(state, model, opt, device):
    """A state of _state's into the model and optimiser; (the epoch to go on from, the history, the best)."""
    try:
        model.load_state_dict(state['model'])
        opt.load_state_dict(state['optimizer'])
        torch.set_rng_state(state['rng'])
        if device.type == 'cuda' and state.get('device_rng') is not None:
            torch.cuda.set_rng_state(state['device_rng'], device)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # weights of another shape or name
        raise ResumeRefused(f'last.pt does not fit the classifier ({quoted_error(exc)})') from None
    return state['epoch'], list(state['history']), (state['best_val'], state['best_weights'])
