"""The GPU's hot loops without the host in them: CUDA graphs, frozen bf16 weights, host-sync checks.

A training step of the denoiser or an evaluation batch is some hundreds of small kernels; launched one
by one from Python the GPU waits on the launches (the step is launch-bound). Replayed from a CUDA graph
they cost one launch. A graph replays the kernels it recorded on the tensors it recorded: it applies
where shapes are static (CIFAR: 225 equal batches of 200) and nothing in the step reads a value back to
the host, which `host_syncs` checks before anything is captured. Random draws from the default CUDA
generator are graph-safe: a replay takes its Philox offsets from the generator's state at replay time,
in the order an eager call would, so seeding, resuming and replaying draw the same numbers.
"""
import warnings

import torch
import torch.nn as nn


def prepare_cuda(device):
    """Process-wide settings of a CUDA run: cuDNN picks the fastest convolution for each shape (the
    first batch of a shape pays for the trial; the engine reports that epoch apart)."""
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True


def store_frozen_bf16(module):
    """The convolution and linear weights of a frozen module stored once in bf16 and channels-last.
    Under bf16 autocast they were cast at every call, to the same values (so nothing computed changes);
    stored so, a call launches no casts and reads half the bytes. BatchNorm stays float32, as autocast
    keeps it. Linear layers inside attention blocks are left alone (their packed projection is not a
    Linear module, and both must keep one dtype). State dicts still hold float32, so checkpoints do not
    depend on the device that wrote them. Idempotent."""
    in_attention = {id(m.out_proj) for m in module.modules() if isinstance(m, nn.MultiheadAttention)}
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in in_attention and m.weight.dtype == torch.float32:
            m.to(torch.bfloat16)
    if not getattr(module, '_float32_state', False):
        module.register_state_dict_post_hook(_float32_state)
        module._float32_state = True
    return module.to(memory_format=torch.channels_last)


def _float32_state(module, state_dict, prefix, local_metadata):
    for name, value in state_dict.items():
        if name.startswith(prefix) and value.dtype == torch.bfloat16:
            state_dict[name] = value.float()


SYNC_WARNING = 'synchroniz'  # in torch's sync-debug warning: "called a synchronizing CUDA operation"
# a capture is spoilt only by this thread's unsafe calls: under the default 'global' mode a DataLoader's
# pin-memory thread, allocating pinned memory or querying an event meanwhile, would end the capture and
# the run with it (image-file evaluation captures with its loader running)
CAPTURE_ERRORS = 'thread_local'


def host_syncs(fn, *args):
    """fn(*args) under torch's sync debug mode: its result, and the warnings of the host syncs it made
    (a value read back, a blocking copy), none of which a CUDA graph can hold."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            result = fn(*args)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return result, [str(w.message).splitlines()[0] for w in caught if SYNC_WARNING in str(w.message)]


class GraphedCalls:
    """fn(*tensors) replayed from CUDA graphs, one per input shape. For each shape the first `warmup`
    calls run eagerly on a side stream, as capture needs (cuDNN autotuning, lazily made state such as
    the optimiser's moments), the last of them watched for host syncs; a shape whose warm-up synced stays
    eager and is named once, else the next call captures fn and replays it, and every later call
    replays. Calls are the real work (training steps, evaluation batches), whichever way they run.

    The outputs of a replay are the graph's own tensors, valid until the next call of that shape."""

    def __init__(self, fn, warmup, name):
        self.fn, self.warmup, self.name = fn, warmup, name
        self.shapes = {}  # (shape, dtype) of every input → {'calls', 'graph', 'inputs', 'outputs', 'syncs'}
        self.stream = torch.cuda.Stream()

    def __call__(self, *inputs):
        key = tuple((tuple(x.shape), x.dtype) for x in inputs)
        entry = self.shapes.setdefault(key, {'calls': 0, 'graph': None, 'syncs': None})
        entry['calls'] += 1
        if entry['graph'] is not None:
            for static, x in zip(entry['inputs'], inputs):
                static.copy_(x)
            entry['graph'].replay()
            return entry['outputs']
        if entry['syncs']:  # refused at warm-up: eager from now on
            return self.fn(*inputs)
        if entry['calls'] <= self.warmup:
            return self._warm_up(entry, inputs)
        return self._capture(entry, inputs)

    @property
    def captured(self):
        return sum(e['graph'] is not None for e in self.shapes.values())

    def _warm_up(self, entry, inputs):
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            if entry['calls'] < self.warmup:
                out = self.fn(*inputs)
            else:
                out, entry['syncs'] = host_syncs(self.fn, *inputs)
        torch.cuda.current_stream().wait_stream(self.stream)
        if entry['syncs']:
            print(f'note: {self.name} stays eager (no CUDA graph): it synchronises with the host '
                  f'({entry["syncs"][0]})')
        return out

    def _capture(self, entry, inputs):
        entry['inputs'] = [x.clone() for x in inputs]
        entry['graph'] = torch.cuda.CUDAGraph()
        with torch.cuda.graph(entry['graph'], capture_error_mode=CAPTURE_ERRORS):
            entry['outputs'] = self.fn(*entry['inputs'])
        entry['graph'].replay()  # capture records without running: this call's work
        return entry['outputs']
