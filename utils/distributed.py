"""torch.distributed helpers: one process stays the default; `torchrun --nproc_per_node N` scales out.

Under torchrun every rank extracts features for its shard of the files (the parts are assembled by
rank 0 into the one cache file), then trains data-parallel with DistributedDataParallel; rank 0
evaluates and writes the run folder.
"""
import os

import torch
import torch.distributed as dist


def init_from_env(device_name='auto'):
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get('WORLD_SIZE', '1')) > 1:
        use_cuda = torch.cuda.is_available() and device_name != 'cpu'
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', '0')))
        dist.init_process_group('nccl' if use_cuda else 'gloo')


def active():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    return dist.get_rank() if active() else 0


def world_size():
    return dist.get_world_size() if active() else 1


def is_main():
    return rank() == 0


def barrier():
    if active():
        dist.barrier()


def local_device(device):
    """Under torchrun on GPUs each rank uses its own device."""
    if active() and device.type == 'cuda':
        return torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
    return device


def broadcast_object(obj):
    """rank 0's value of a picklable object on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
