"""torch.distributed helpers: one process stays the default; `torchrun --nproc_per_node N` scales out.

Under torchrun every rank extracts features for its shard of the files (the parts are assembled by
rank 0 into the one cache file), then trains data-parallel with DistributedDataParallel; rank 0
evaluates and writes the run folder.

`--gpu_devices 0 1 2 3` (the authors' flag) names the CUDA devices: one id is `--device cuda:N`;
several relaunch the same command once per listed device, as torchrun would (launch: one exit status,
one refusal line, signals passed on, no process left behind; the authors wrapped
their networks in nn.DataParallel over those devices; DistributedDataParallel splits each batch the
same way, one share per device).
"""
import contextlib
import datetime
import gc
import os
import signal
import subprocess
import sys
import time

import torch
import torch.distributed as dist

from utils.errors import REFUSAL_EXIT, SetupError
from utils.runtime import progress

LAUNCHED = 'LRA_DIFFUSION_GPU_DEVICES'  # set for the processes --gpu_devices started: the ids they serve
# How long a rank waits in a collective for the others. Some work is rank 0's alone while they wait: a
# dataset or CLIP download, a million-row feature cache joined from its parts, each epoch's evaluation.
# NCCL's default (10 minutes) would end a healthy run over a slow download; a rank that fails is noticed at
# once by the launch (launch), so this bounds only a real hang.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


def init_from_env(device_name='auto'):
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get('WORLD_SIZE', '1')) > 1:
        use_cuda = torch.cuda.is_available() and device_name != 'cpu'
        local = int(os.environ.get('LOCAL_RANK', '0'))
        if use_cuda and local >= torch.cuda.device_count():
            raise SetupError(f'process {local} of this machine has no CUDA device of its own (torch sees '
                             f'{torch.cuda.device_count()}): start at most that many (torchrun --nproc_per_node), '
                             f'or use --gpu_devices')
        if use_cuda:
            torch.cuda.set_device(local)
        # device_id binds the NCCL communicator to this rank's device at once (its barriers too, which would
        # otherwise guess the device from the rank)
        dist.init_process_group('nccl' if use_cuda else 'gloo', timeout=COLLECTIVE_TIMEOUT,
                                device_id=torch.device('cuda', local) if use_cuda else None)


def quiet_unless_main():
    """Ranks other than 0 print no log lines and draw no bars: theirs repeat rank 0's (the data, the checks, the
    k trials), once a device. What they must say still goes to stderr (a signal's, an error's), and a
    refusal all ranks make is rank 0's one line (utils/runs/cli)."""
    if active() and not is_main():
        progress.HIDDEN = True
        sys.stdout = open(os.devnull, 'w')


def leave(failed=False):
    """Leave the process group at the end of a run: a rank torn down while still in it can abort (SIGABRT)
    as its peers leave, and turn a finished launch into a failed one. After a failure under NCCL the
    communicator is aborted instead: destroying it waits for every rank, and the others may be waiting in a
    collective for this one (the launch then stops them)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if failed and dist.get_backend() == 'nccl':
        abort = getattr(dist.distributed_c10d, '_abort_process_group', None)  # not in every torch >= 2.6
        if abort is not None:
            abort()
    else:
        # the group's last owner can be a DistributedDataParallel in a reference cycle (a trainer keeps bound
        # methods of itself): collected now, the group is destroyed here and its gloo threads end with it; left
        # to the interpreter's exit, they ended the process at random ('terminate called without an active
        # exception', SIGABRT: exit 134 after a finished run)
        gc.collect()
        dist.destroy_process_group()


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


def epoch_totals(loss_sum, first_bad):
    """Over every rank: the summed training loss, and the first step at which any rank's loss was
    non-finite (-1: none), as device tensors. Each rank trains a shard of every batch; rank 0 alone would
    log a shard's loss, and miss a NaN another rank saw, which the gradients' all-reduce has spread into
    every rank's weights by then."""
    loss_sum, first_bad = loss_sum.clone(), first_bad.clone()
    if active():
        dist.all_reduce(loss_sum)
        none = torch.iinfo(first_bad.dtype).max
        first_bad = torch.where(first_bad < 0, torch.full_like(first_bad, none), first_bad)
        dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
        first_bad = torch.where(first_bad == none, torch.full_like(first_bad, -1), first_bad)
    return loss_sum, first_bad


def agreed_stop(signum, device):
    """The stop signal every rank acts on at an epoch's end: the highest number any rank received (None:
    none). A signal can reach the ranks either side of an epoch's end (Ctrl-C, a scheduler's SIGTERM to one
    process): ranks deciding alone would part, one stopping while another waits for it in the next
    epoch's collectives, and rank 0 would not write last.pt for the epoch the others stopped after."""
    if not active():
        return signum
    agreed = torch.tensor(signum or 0, device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return int(agreed) or None


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first, then the others: where it downloads what is missing (the dataset, the
    published inputs, an encoder's weights), the others find the files there, not one download each into
    the same place at once. A refusal in rank 0 lets the others go on to make it too."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


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


def device_launch(ids, script, argv, environ, port):
    """(command, environment) of each process that runs `script argv` once per id, as torchrun would start
    them: each sees only the listed devices (ids count among those the parent sees, CUDA_VISIBLE_DEVICES
    included) and takes the one of its local rank; they meet on 127.0.0.1:`port`."""
    seen = [d for d in environ.get('CUDA_VISIBLE_DEVICES', '').split(',') if d.strip()]
    physical = [seen[i] if seen else str(i) for i in ids]
    # the store the ranks meet at is the launch's (agent_store), as torchrun's is its agent's: a rank 0
    # ending first would take it from ranks still leaving the group, and they would abort
    common = {**environ, 'CUDA_VISIBLE_DEVICES': ','.join(physical), LAUNCHED: ' '.join(map(str, ids)),
              'WORLD_SIZE': str(len(ids)), 'LOCAL_WORLD_SIZE': str(len(ids)), 'MASTER_ADDR': '127.0.0.1',
              'MASTER_PORT': str(port), 'TORCHELASTIC_USE_AGENT_STORE': 'True'}
    command = [sys.executable, script, *argv]
    return [(command, {**common, 'RANK': str(rank), 'LOCAL_RANK': str(rank)}) for rank in range(len(ids))]


def use_gpu_devices(ids, device_given, refuse, command):
    """Apply --gpu_devices `ids` before any work (`device_given`: --device where the command line gave it).
    Returns (the device this process runs on, or None: --device stands; the exit status of the processes
    launched, or None: go on in this process). One id is that device; several run the script and arguments
    `command()` gives (the command, whether typed or called as main(argv) from Python) once per device
    (launch). `refuse(message)` raises the caller's one-line refusal."""
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
    print(f'--gpu_devices {" ".join(map(str, ids))}: {len(ids)} processes, data-parallel', flush=True)
    store = agent_store(len(ids))
    script, argv = command()
    return None, launch(device_launch(ids, script, argv, os.environ, store.port), ids)


def agent_store(world):
    """The TCP store the launched ranks meet at, served by this process (on a free port) while they run."""
    return dist.TCPStore('127.0.0.1', 0, world, is_master=True, wait_for_workers=False)


STOP_GRACE_S = 60  # after one process fails, the others (waiting in a collective for it) get this long


def launch(ranks, ids):
    """Run each rank's (command, environment) to its end and return one exit status: 0 when all succeeded,
    else the first failure's (a refusal: rank 0's one line and 2; the other ranks say nothing of one).
    A failed rank leaves the others waiting for it in a collective: they are stopped. Ctrl-C reaches every
    rank from the terminal, and each stops as a run does; a SIGTERM sent to this process is passed on."""
    procs = [subprocess.Popen(command, env=env) for command, env in ranks]

    def pass_on(signum, frame):
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),  # the ranks have it already
                signal.SIGTERM: signal.signal(signal.SIGTERM, pass_on)}
    try:
        first = wait_for_first_failure(procs)
        if first is not None:
            stop_all(procs)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if first is None:
        return 0
    code = procs[first].returncode
    status = 128 - code if code < 0 else code  # ended by a signal: the shell's way of saying which
    if first != 0:  # rank 0 was stopped by this process: say which one ended the launch
        # a refusal that rank alone made is its line above (run alone, as rank 0, it might not refuse)
        why = ('its line above says why' if status == REFUSAL_EXIT else
               f'run the command with --gpu_devices {ids[first]} alone to see why')
        print(f'--gpu_devices: the process for device {ids[first]} (rank {first}) ended with exit status {status}; '
              f'{why}', file=sys.stderr)
    return status


SETTLE_S = 3  # how long rank 0 may take to end too after another failed (a refusal all ranks make: its line)


def wait_for_first_failure(procs):
    """The rank whose failure ends the launch: rank 0 where it exits failing too within SETTLE_S (its refusal
    is the one said; not where a signal ended it, as a peer's going can), else the first to fail; None when
    all succeeded."""
    while True:
        codes = [proc.poll() for proc in procs]
        failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            settled = time.monotonic() + SETTLE_S
            while procs[0].poll() is None and time.monotonic() < settled:
                time.sleep(0.05)
            return 0 if (procs[0].returncode or 0) > 0 else failed[0]
        if all(code == 0 for code in codes):
            return None
        time.sleep(0.1)


def stop_all(procs):
    """SIGTERM to every rank still running, SIGKILL to those left STOP_GRACE_S later."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    ended = time.monotonic() + STOP_GRACE_S
    for proc in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, ended - time.monotonic()))
        if proc.poll() is None:
            proc.kill()
            proc.wait()
