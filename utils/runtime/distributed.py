"""torch.distributed helpers: one process stays the default; `torchrun --nproc_per_node N` scales out.

Under torchrun every rank extracts features for its shard of the files (the parts are assembled by
rank 0 into the one cache file), then trains data-parallel with DistributedDataParallel; rank 0
evaluates and writes the run folder.

`--gpu_devices 0 1 2 3` (the authors' flag) names the CUDA devices: one id is `--device cuda:N`;
several relaunch the same command under torchrun, one process per listed device (the authors wrapped
their networks in nn.DataParallel over those devices; DistributedDataParallel splits each batch the
same way, one share per device).
"""
import os
import subprocess
import sys

import torch
import torch.distributed as dist

LAUNCHED = 'LRA_DIFFUSION_GPU_DEVICES'  # set for the processes --gpu_devices started: the ids they serve


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


def gpu_devices_problem(ids, device, visible, launched=None):
    """Why `--gpu_devices ids` cannot run here, in one line naming the fix; None when it can. `device`:
    the --device the command line gives (None: not given); `visible`: the CUDA devices torch sees;
    `launched`: the ids of the launch this process belongs to, if any."""
    named = ' '.join(map(str, ids))
    if launched is not None:
        return None if launched == named else (f'--gpu_devices {named} inside a launch for devices {launched}: '
                                               f'start the command without torchrun')
    if device is not None:
        return f'--gpu_devices {named} and --device {device} both name devices: give one of them'
    if len(set(ids)) != len(ids):
        return f'--gpu_devices {named} names a device twice: list each id once'
    if not visible:
        return (f'--gpu_devices {named}: torch sees no CUDA device (torch {torch.__version__}); drop --gpu_devices '
                f'to run on the CPU, or run on a GPU machine')
    absent = [i for i in ids if not 0 <= i < visible]
    if absent:
        return (f'--gpu_devices {named}: device {absent[0]} is not visible (torch sees {visible} CUDA device(s), ids '
                f'0..{visible - 1}); list visible ids')
    if len(ids) > 1 and int(os.environ.get('WORLD_SIZE', '1')) > 1:
        return f'--gpu_devices {named} under torchrun: choose the devices with torchrun and CUDA_VISIBLE_DEVICES instead'
    return None


def device_launch(ids, script, argv, environ):
    """(command, environment) that runs `script argv` as one torchrun process per id: each process sees
    only its listed devices (ids count among those the parent sees, CUDA_VISIBLE_DEVICES included) and
    takes the one of its local rank."""
    seen = [d for d in environ.get('CUDA_VISIBLE_DEVICES', '').split(',') if d.strip()]
    physical = [seen[i] if seen else str(i) for i in ids]
    env = {**environ, 'CUDA_VISIBLE_DEVICES': ','.join(physical), LAUNCHED: ' '.join(map(str, ids))}
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(len(ids)),
               script, *argv]
    return command, env


def use_gpu_devices(ids, device_given, refuse):
    """Apply --gpu_devices `ids` before any work (`device_given`: --device where the command line gave it).
    Returns (the device this process runs on, or None: --device stands; the exit status of the processes
    launched, or None: go on in this process). One id is that device; several run this command once per
    device under torchrun. `refuse(message)` raises the caller's one-line refusal."""
    if not ids:
        return None, None
    launched = os.environ.get(LAUNCHED)
    problem = gpu_devices_problem(ids, device_given, torch.cuda.device_count(), launched)
    if problem:
        refuse(problem)
    if launched is not None:  # a process of the launch: its local rank's device (local_device)
        return 'cuda', None
    if len(ids) == 1:
        return f'cuda:{ids[0]}', None
    command, env = device_launch(ids, sys.argv[0], sys.argv[1:], os.environ)
    print(f'--gpu_devices {" ".join(map(str, ids))}: {len(ids)} processes, data-parallel ({" ".join(command[1:5])} ...)',
          flush=True)
    return None, subprocess.call(command, env=env)
