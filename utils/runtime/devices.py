"""The device a run asks for (`--device`), and how it is named in results."""
import gc
import os

import torch

from utils.errors import SetupError


def resolve_device(name):
    """The torch device --device names. A CUDA device named by its index becomes the current one: side
    streams, CUDA-graph capture and the graphs' memory pool work on the current device, not on the
    tensors' (a graph captured on cuda:0's stream around work on cuda:1 fails or records nothing). Under
    torchrun each rank's is its LOCAL_RANK's, set as it joins (utils/runtime/distributed.init_from_env)."""
    device = _resolve(name)
    if device.type == 'cuda' and device.index is not None and int(os.environ.get('WORLD_SIZE', '1')) == 1:
        torch.cuda.set_device(device)
    return device


def _resolve(name):
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SetupError(f'--device {name} asked for CUDA, but torch sees no CUDA device '
                         f'(torch {torch.__version__}); use --device cpu or run on a GPU machine')
    if device.type == 'cuda' and device.index is not None and device.index >= torch.cuda.device_count():
        raise SetupError(f'--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible')
    return device


def device_description(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)'


def free_memory():
    """Collect what reference cycles hold (a finished Trainer: its optimiser state, CUDA graphs and their
    memory pools) and give the freed CUDA blocks back, before the next k trial or the run allocates."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# how an optimiser runs, not what it computes: a state saved by another device keeps this process's
IMPLEMENTATION = ('lr', 'fused', 'capturable', 'foreach')


def load_optimizer_state(optimizer, state):
    """A saved optimiser state (moments, step counts) loaded to run the way `optimizer` runs: the device
    that saved it may have been another, so the implementation flags and the learning-rate holder (a
    device tensor on CUDA, which a CUDA graph reads) stay the optimiser's own; they also decide where
    the step counts are kept. Loaded as saved, a CPU state on CUDA would step unfused, reading the lr
    tensor back to the host: no graph could capture that step."""
    own = [{k: g[k] for k in IMPLEMENTATION if k in g} for g in optimizer.param_groups]
    groups = [{**g, **kept} for g, kept in zip(state['param_groups'], own)]
    optimizer.load_state_dict({**state, 'param_groups': groups})
    # load_state_dict deep-copies the groups: the lr tensor the schedule fills must be the one it holds,
    # or every step after a resume would read the copy, frozen at the saved value
    for group, kept in zip(optimizer.param_groups, own):
        group.update(kept)
    _lay_out_like_params(optimizer)


def _lay_out_like_params(optimizer):
    """Moments laid out as their parameters: on CUDA convolution weights are channels-last, on the CPU
    contiguous, and CUDA's fused Adam and SGD refuse a moment whose strides differ from its parameter's
    (a state saved on the CPU, resumed on a GPU)."""
    for param, moments in optimizer.state.items():
        for name, value in moments.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                moments[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)
