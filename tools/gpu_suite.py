"""Every GPU figure of the package in one lease, most valuable first, resumable across commands.

    python -m tools.gpu_suite --out runs/gpu_suite --ship $OUT        # one GPU, repeat until done
    python -m tools.gpu_suite --out /tmp/s --smoke                    # every stage, tiny, on the CPU
    python -m tools.gpu_suite --reassemble SHARDS_DIR --to model/simclr_cifar10.pt

Stages, in priority order: the CUDA tests; the clip package's CLIP towers against the fused ones on
10k images (the same-device baseline of every CLIP speed-up); the paper's inference table at 10k and 50k
images; the per-step neighbour search (float32 and the bf16 shortlist); two epochs of train_CIFAR.py
on real CIFAR-10 per f_p path and recipe, once per --cuda_graph mode (off, eval, all), each projected
to a paper-length run from its warm epochs; the authors' step's frozen networks alone per
--frozen_kernels way (eager, fused, compiled), then two epochs of each on both paths; two epochs of
train_Clothing1M.py on generated JPEGs, the authors' fine-tuned encoder and the cached fast path, the warm one projected to their 300-epoch run; exact kNN
1M × 768; JPEG decoding + ViT-L/14 extraction, with decoding alone and the encoder alone; SimCLR
pre-training epochs per second (three epochs, the first apart, the step a CUDA graph); profiles of
what is left: a warm epoch of the authors' CIFAR command (its default: graphed evaluation, eager step) and 10k-image ViT-L/14 inference;
the same SimCLR epochs eager (what the graph gains); the paper's first row for whatever budget is
left (tools/paper_device.py: a SimCLR encoder pre-trained here, then train_CIFAR.py with the authors'
cifar10-1-0.35.npy from --inputs_dir and their recipe, 200 epochs, or fewer and labelled so).
Each runs as a subprocess under a timeout taken from the remaining --budget_s and writes
OUT/<stage>.json as soon as it finishes; a stage whose JSON is there is skipped, so a second command
continues where the first stopped (the row's pre-training and run resume from their last epoch). The suite stops
before --budget_s, names the stages that remain, and prints one markdown table with the authors'
figures beside ours. --ship DIR copies what must come back from a device (one results JSON, the
pre-trained encoder as fp16 shards of at most 15 MB) into DIR. See tools/README.md.
"""
import time

_IMPORTS_FROM = time.monotonic()  # before the imports: a device's limit counts them too

import argparse
import contextlib
import importlib.util
import io
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from datetime import datetime, timezone

from benchmarks.common import AUTHORS_H100, TARGETS
from tools import shards
from utils.errors import SetupError
from utils.runtime.frozen_kernels import FROZEN_KERNELS
from utils.storage.saving import save_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

# Recipe variants of train_CIFAR.py: name → extra flags. A variant whose flags the parser rejects is
# skipped with a note (the flag may not exist in this checkout yet).
RECIPES = {'authors': [], 'improved': ['--recipe', 'improved']}
TRAINING_PATHS = ('SimCLR', 'ViT-L/14')   # the f_p paths timed on real CIFAR-10
KERNEL_RUNS = {'SimCLR': ('--modes', 'eval', '--kernels', 'eager', 'fused', 'compiled'),
               'ViT-L/14': ('--modes', 'eval', '--kernels', 'eager', 'compiled')}  # nothing folds on this path
MIN_STAGE_S = 20           # no stage is started with less time than this left
STOP_GRACE_S = 10          # a stage cut off is sent SIGTERM (a training script saves), then SIGKILL this much later
REPORT_S = 15              # kept back for the table and the shipping
IMPORT_S = time.monotonic() - _IMPORTS_FROM  # part of --budget_s: a device's limit counts from the command's start
# the paper row's command runs past its --budget_s by the grace its cut-off stages get to stop (10 s each,
# train and close) and its shipping: its budget is the stage's timeout less this
ROW_MARGIN_S = 45
# the row's own stages get STOP_GRACE_S to stop: the row must get longer, or a SIGKILL would leave its
# running stage (a process group of its own) behind
ROW_GRACE_S = 2 * STOP_GRACE_S + 5
CUDA_TEST_TIMEOUT_S = 150  # one hung capture or compile ends its test, not the stage's whole budget
CIFAR_TOOL = ('.device_data/tools/cifar10_batches.py', '../shared/tools/cifar10_batches.py')
RESULTS = 'gpu_suite_results.json'

# --smoke: each stage at the smallest size that still runs its whole path, on the CPU (with --small
# every CLIP column is the same tiny stand-in, so one of them stands for all three)
SMOKE_COLUMNS = ('Standard', 'SimCLR', 'ViT-L/14')
CLIP_COLUMNS = ('ViT-B/32', 'ViT-B/16', 'ViT-L/14')
SIMCLR_SPEED_EPOCHS = 3   # the first carries the warm-up (cuDNN autotuning, the graph capture): two warm ones
SMOKE = {
    'inference': ['--sizes', '8', '--small', '--batch_size', '8', '--diff_encoder', 'fp_mlp', '--feature_dim', '32',
                  '--device', 'cpu', '--columns', *SMOKE_COLUMNS],
    'clip_towers': ['--sizes', '8', '--small', '--batch_size', '8', '--diff_encoder', 'fp_mlp', '--feature_dim',
                    '32', '--device', 'cpu', '--columns', 'ViT-L/14'],
    'inference_profile': ['--sizes', '8', '--small', '--batch_size', '8', '--diff_encoder', 'fp_mlp', '--feature_dim',
                          '32', '--device', 'cpu'],
    'training': ['--small', '--sizes', '32', '16', '16', '--device', 'cpu', '--diff_encoders', 'fp_mlp', '--modes',
                 'eager', 'graphed'],
    'train_CIFAR': ['--batch_size', '16', '--n_samples', '0'],
    'file_training': ['--small', '--device', 'cpu'],
    'retrieval': ['--n', '2000', '--dim', '32', '--k', '5', '--device', 'cpu'],
    'frozen_kernels': ['--small', '--device', 'cpu'],
    'per_step_search': ['--n', '2000', '--dim', '32', '--queries', '200', '--device', 'cpu'],
    'extraction': ['--n', '24', '--small', '--workers', '1', '--batch_size', '8', '--device', 'cpu'],
    'simclr': ['--dataset', 'digits', '--arch', 'resnet18', '--batch_size', '32', '--n_images', '64',
               '--image_size', '8', '--device', 'cpu', '--knn_every', '1', '--warmup_epochs', '0'],
}


@dataclass
class Stage:
    name: str
    command: callable            # (args, result path) -> argv; the stage writes its result there
    collect: callable = None     # (result path, args) -> result dict; default: the JSON the stage wrote
    needs_cifar: bool = False
    ok_codes: tuple = (0,)
    resumable: bool = False      # a cut-off keeps its progress: retry whatever the budget
    recipe: str = None           # training stages: the RECIPES entry whose flags they pass
    min_s: float = None          # not started with less than this left (default MIN_STAGE_S)
    grace_s: float = None        # a cut-off's SIGTERM to SIGKILL (default STOP_GRACE_S)


# ---- the stages' command lines ------------------------------------------------------------------

CUDA_TESTS = ('tests/test_gpu.py', 'tests/test_gpu_speed.py')


def cuda_tests(args, out):
    # -v: a line per test as it ends, so a cut-off stage's note still says how far the tests got; a test
    # timed out by pytest-timeout (the device has it) is a failure with its stack, and the rest still run
    timeout = ['--timeout', str(CUDA_TEST_TIMEOUT_S)] if importlib.util.find_spec('pytest_timeout') else []
    return [PY, '-m', 'pytest', '-v', '-p', 'no:cacheprovider', *timeout, *CUDA_TESTS, f'--junitxml={out}']


def junit_counts(out, args):
    """Pass/fail counts from pytest's JUnit XML (our own pytest run wrote it)."""
    suite = ElementTree.parse(out).getroot()
    suite = suite if suite.tag == 'testsuite' else suite.find('testsuite')
    n = {k: int(suite.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped')}
    failed = {}  # test → the first line of its failure (the device's log does not come back otherwise)
    for case in suite.iter('testcase'):
        problem = case.find('failure') if case.find('failure') is not None else case.find('error')
        if problem is not None:
            failed[f'{case.get("classname")}::{case.get("name")}'] = (problem.get('message') or '')[:300]
    return {'passed': n['tests'] - n['failures'] - n['errors'] - n['skipped'], 'failed': n['failures'],
            'errors': n['errors'], 'skipped': n['skipped'], 'failed_tests': failed}


def clip_towers(args, out):
    """The clip package's tower and the fused one, each CLIP column, 10k images, one process."""
    size = SMOKE['clip_towers'] if args.smoke else ['--sizes', '10000', '--columns', *CLIP_COLUMNS]
    return [PY, '-m', 'benchmarks.inference', '--out', out, '--clip_towers', 'clip', 'fused', *size]


def inference(args, out):
    size = SMOKE['inference'] if args.smoke else ['--sizes', '10000', '50000']  # the paper's table, both sizes
    return [PY, '-m', 'benchmarks.inference', '--out', out, *size]


def inference_profile(args, out):
    size = SMOKE['inference_profile'] if args.smoke else ['--sizes', '10000']
    return [PY, '-m', 'benchmarks.inference', '--out', out, '--columns', 'ViT-L/14', '--profile', *size]


def training(encoder, recipe, *more):
    """Two epochs of train_CIFAR.py on real CIFAR-10 per --cuda_graph mode (off, eval, all): the first epoch
    and evaluation apart, the second warm (`more`: benchmarks.training flags, e.g. --profile)."""
    def command(args, out):
        where = SMOKE['training'] if args.smoke else ['--data_root', args.data_root, '--diff_encoders', 'default']
        return [PY, '-m', 'benchmarks.training', '--encoders', encoder, '--nepoch', '2', '--out', out, *where, *more,
                '--', *(SMOKE['train_CIFAR'] if args.smoke else []), *RECIPES[recipe]]
    return command


def frozen_kernels(args, out):
    """The authors' step's frozen networks alone (benchmarks.frozen_kernels), each --frozen_kernels way."""
    return [PY, '-m', 'benchmarks.frozen_kernels', '--out', out, *(SMOKE['frozen_kernels'] if args.smoke else [])]


def per_step_search(args, out):
    size = SMOKE['per_step_search'] if args.smoke else []
    return [PY, '-m', 'benchmarks.retrieval', '--per_step', '--out', out, *size]


def file_training(args, out):
    return [PY, '-m', 'benchmarks.file_training', '--out', out, *(SMOKE['file_training'] if args.smoke else [])]


def retrieval(args, out):
    return [PY, '-m', 'benchmarks.retrieval', '--out', out, *(SMOKE['retrieval'] if args.smoke else [])]


def extraction(args, out):
    size = SMOKE['extraction'] if args.smoke else ['--n', '20000', '--workers', str(min(16, os.cpu_count()))]
    return [PY, '-m', 'benchmarks.extraction', '--out', out, *size]


def simclr_speed(*flags):
    """A short pre-training run from scratch, timed per epoch (its folder is cleared first); `flags`: more
    pretrain_SimCLR.py flags (--no-cuda_graph)."""
    def command(args, out):
        root = simclr_speed_dir(args, flags)
        shutil.rmtree(root, ignore_errors=True)
        size = SMOKE['simclr'] if args.smoke else ['--dataset', 'cifar10', '--data_root', args.data_root,
                                                   '--no-download', '--arch', 'resnet50']
        epochs = str(2 if args.smoke else SIMCLR_SPEED_EPOCHS)
        return [PY, 'pretrain_SimCLR.py', *size, '--nepoch', epochs, '--knn_every', epochs, *flags,
                '--out_dir', root, '--output', os.path.join(root, 'encoder.pt')]

    def result(out, args):
        """Seconds per epoch, the first apart, and the kNN accuracy at the end, from the run's sidecar."""
        sidecar = read_json(os.path.join(simclr_speed_dir(args, flags), 'encoder.json'))
        keys = ('architecture', 'dataset', 'batch_size', 'epochs', 'first_epoch_s', 'warm_epoch_s', 'warm_epochs',
                'epochs_per_s', 'cuda_graph', 'knn_curve', 'device')
        return {k: sidecar[k] for k in keys}
    return command, result


def simclr_speed_dir(args, flags):
    return os.path.join(args.out, 'simclr_speed' + ''.join(flags).replace('--', '-'))


def paper_row(args, out):
    """The paper's first row (tools/paper_device.py: SimCLR pre-trained here, then train_CIFAR.py with the
    authors' type-I 35% file and recipe) in whatever budget is left; resumed by the next command."""
    where = [] if args.smoke else ['--data_root', args.data_root, '--inputs_dir', args.inputs_dir]
    return [PY, '-m', 'tools.paper_device', '--out', os.path.join(args.out, 'paper_device'), *where,
            '--budget_s', str(int(args.stage_timeout_s - ROW_MARGIN_S)),
            '--ship', os.path.join(args.out, 'paper_row'),
            '--frozen_kernels', args.frozen_kernels, *(['--smoke'] if args.smoke else [])]


def paper_row_result(out, args):
    """What the row's command did and the run's figures (all inside the suite's results JSON: a device sends
    back at most 8 files), and its encoder's shards moved to where ship() takes them from."""
    shipped = os.path.join(args.out, 'paper_row')
    record = read_json(os.path.join(shipped, 'paper_device.json'))  # the run's config, log and encoder inside
    failed = record.get('failed') or []
    if failed and failed != ['inputs']:  # a stage that failed is not retried: the next command goes on
        raise RuntimeError(f"the row's {', '.join(map(str, failed))} stage failed; its log tail is in paper_device.json")
    if os.path.isdir(os.path.join(shipped, 'simclr_shards')):
        shutil.copytree(os.path.join(shipped, 'simclr_shards'), os.path.join(args.out, 'simclr_shards'),
                        dirs_exist_ok=True)
    summary = record.get('summary') or {}
    # missing inputs (checked in seconds) leave the row to the next command, once they are copied in
    record['complete'] = summary.get('epochs', 0) >= (2 if args.smoke else 200)
    return record


def stages():
    """Every stage in priority order (the training variants from RECIPES as it is now)."""
    listed = [Stage('cuda_tests', cuda_tests, junit_counts, ok_codes=(0, 1)), Stage('clip_towers', clip_towers),
              Stage('inference', inference), Stage('per_step_search', per_step_search)]
    for recipe in RECIPES:
        for encoder in TRAINING_PATHS:
            listed.append(Stage(f'training-{encoder.replace("/", "")}-{recipe}', training(encoder, recipe),
                                needs_cifar=True, recipe=recipe))
    # the authors' paths' default mode (graphed evaluation, eager step) per --frozen_kernels way: the
    # network-level figures first, then what they make of an epoch (f_p folds on the SimCLR path only)
    listed += [Stage('frozen_kernels', frozen_kernels),
               *(Stage(f'training-kernels-{encoder.replace("/", "")}-authors',
                       training(encoder, 'authors', *KERNEL_RUNS[encoder]), needs_cifar=True, recipe='authors')
                 for encoder in KERNEL_RUNS)]  # at smoke size (--small) without 'compiled'
    listed += [Stage('file_training', file_training), Stage('retrieval', retrieval), Stage('extraction', extraction),
               Stage('simclr_speed', *simclr_speed(), needs_cifar=True),
               Stage('profile-SimCLR-authors', training('SimCLR', 'authors', '--profile', '--modes', 'eval'),
                     needs_cifar=True),
               Stage('profile-inference-ViT-L14', inference_profile),
               Stage('simclr_speed-eager', *simclr_speed('--no-cuda_graph'), needs_cifar=True),
               Stage('paper_row', paper_row, paper_row_result, ok_codes=(0, 1), needs_cifar=True, resumable=True,
                     min_s=ROW_MARGIN_S + 30, grace_s=ROW_GRACE_S)]
    return listed


# ---- running them ---------------------------------------------------------------------------------

def rejected_flags(flags):
    """Why train_CIFAR.py's parser refuses these flags (its last error line), or None."""
    import train_CIFAR
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            train_CIFAR.config(list(flags))
    except SystemExit:
        return (err.getvalue().strip().splitlines() or ['rejected'])[-1]
    return None


# a process group of the stage's own (Popen's process_group is Python 3.11's; setpgrp before, as it does)
OWN_GROUP = {'process_group': 0} if sys.version_info >= (3, 11) else {'preexec_fn': os.setpgrp}


def run_command(command, timeout_s, log_path, grace_s=STOP_GRACE_S):
    """Return code, or None when cut off at timeout_s. The stage runs in a process group of its own, so a
    cut-off ends its DataLoader workers too, but in this command's session: a device ends what a command
    leaves running except a new session's, which would hold the GPU and its run folder into the next
    command. A SIGTERM to this process ends the stage before this process exits (status 143)."""
    with open(log_path, 'ab') as log:
        log.write(f'\n$ {" ".join(command)}\n'.encode())
        log.flush()
        started = []
        with ends_with_sigterm(started, grace_s):  # before the stage starts: no moment without it
            started.append(subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, **OWN_GROUP,
                                            env={**os.environ, 'PYTHONUNBUFFERED': '1'}))
            try:
                return started[0].wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                end_group(started[0], grace_s)
                return None


@contextlib.contextmanager
def ends_with_sigterm(started, grace_s):
    """While a stage runs, a SIGTERM to this process (the suite cutting off tools/paper_device.py, say)
    ends the stage's group first; only the main thread can take signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the stage is being ended
        if started:
            end_group(started[0], grace_s, in_handler=True)
        sys.exit(128 + signum)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def end_group(proc, grace_s, in_handler=False):
    """SIGTERM to the stage's process group (a training script stops after its step and saves), SIGKILL if
    it has not ended grace_s later. In a signal handler by polling: the code it interrupted may be inside
    proc.wait(), holding the lock a second wait() would wait for forever."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    ended = time.monotonic() + grace_s
    if in_handler:
        while proc.poll() is None and time.monotonic() < ended:
            time.sleep(0.05)
    else:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):  # the stage's leftovers (DataLoader workers) too
        os.killpg(proc.pid, signal.SIGKILL)
    if not in_handler:
        proc.wait()


def children_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tail(path, n=15):
    with open(path, 'rb') as f:
        return '\n'.join(f.read().decode(errors='replace').splitlines()[-n:])


def find_cifar(args, deadline):
    """Point args.data_root at a cifar-10-batches-py/ folder, converting the JPEG copy with the shared
    tool on first use. Returns None when ready, else a note saying what is missing."""
    if args.smoke or (args.data_root and os.path.isdir(os.path.join(args.data_root, 'cifar-10-batches-py'))):
        return None
    if args.data_root:
        return f'--data_root {args.data_root} holds no cifar-10-batches-py/'
    root = os.path.join(args.out, 'data')
    if not os.path.isdir(os.path.join(root, 'cifar-10-batches-py')):
        tool = next((t for t in [args.cifar_tool] + [os.path.join(REPO, c) for c in CIFAR_TOOL]
                     if t and os.path.isfile(t)), None)
        if tool is None:
            return ('no CIFAR-10: copy /work/shared/tools/cifar10_batches.py and /work/shared/data/cifar10_jpeg.npz '
                    'to .device_data/tools/ and .device_data/data/ (tools/README.md), or pass --data_root')
        partial = root + '.partial'  # converted aside, then renamed: a cut-off leaves no half folder
        shutil.rmtree(partial, ignore_errors=True)
        rc = run_command([PY, tool, partial], deadline - time.monotonic(), os.path.join(args.out, 'logs', 'data.log'))
        if rc != 0:
            return f'converting CIFAR-10 with {tool} failed or was cut off (see {args.out}/logs/data.log)'
        os.replace(partial, root)
    args.data_root = root
    return None


def stage_path(args, stage, suffix='.json'):
    return os.path.join(args.out, stage.name + suffix)


def read_json(path):
    """A JSON file the suite needs: a missing or damaged one is an error here, not an empty result
    (utils/storage/loading.load_json's contract, for caches)."""
    with open(path) as f:
        return json.load(f)


def finished(args, stage):
    path = stage_path(args, stage)
    return os.path.isfile(path) and read_json(path).get('complete', True)


def run_stage(args, stage, deadline):
    """Run one stage; returns 'done', or a note: 'cut off; its log ended: ...', 'failed (...)', or why it did
    not run."""
    cutoff = stage_path(args, stage, '.cutoff.json')
    budget = deadline - time.monotonic()
    if os.path.isfile(cutoff) and not stage.resumable and budget <= read_json(cutoff)['timeout_s']:
        return (f'skipped: cut off at {read_json(cutoff)["timeout_s"]:.0f} s before and only {budget:.0f} s are '
                f'left; give it a longer command (--budget_s) or delete {cutoff}')
    if stage.needs_cifar and (missing := find_cifar(args, deadline)):
        return f'skipped: {missing}'
    if deadline - time.monotonic() < (stage.min_s or MIN_STAGE_S):  # the data conversion took what was left
        return 'not started: no time left after converting CIFAR-10'
    args.stage_timeout_s = deadline - time.monotonic()
    raw = stage_path(args, stage, '.raw')
    if os.path.exists(raw):
        os.remove(raw)
    log = os.path.join(args.out, 'logs', stage.name + '.log')
    started, cpu = time.monotonic(), children_cpu_s()
    rc = run_command(stage.command(args, raw), args.stage_timeout_s, log, stage.grace_s or STOP_GRACE_S)
    seconds, cpu = round(time.monotonic() - started, 1), round(children_cpu_s() - cpu, 1)
    if rc is None:  # its log stays on the device: its last lines come back in the note (a test's progress)
        save_json({'timeout_s': round(args.stage_timeout_s, 1), 'log_tail': tail(log, 5)}, cutoff)
        return f'cut off; its log ended: {" | ".join(line for line in tail(log, 5).splitlines() if line.strip())}'
    record = {'stage': stage.name, 'rc': rc, 'stage_seconds': seconds, 'stage_cpu_s': cpu,
              'finished_utc': datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')}
    try:
        if rc not in stage.ok_codes:
            raise RuntimeError(f'exit code {rc}')
        record.update(status='ok', result=(stage.collect or (lambda p, a: read_json(p)))(raw, args))
        record['complete'] = record['result'].get('complete', True)
    except Exception as exc:  # a failed stage is recorded (and not retried) so the suite goes on
        record.update(status='failed', complete=True, error=f'{type(exc).__name__}: {exc}', log_tail=tail(log))
    save_json(record, stage_path(args, stage))
    if os.path.exists(cutoff):
        os.remove(cutoff)
    return 'done' if record['status'] == 'ok' else f'failed ({record["error"]}); log {log}'


def run_suite(args, report=lambda remaining, notes: None, started=None):
    """Run what is left within the budget counted from `started` (time.monotonic(); default: now, less the
    imports); returns (remaining stage names, notes). `report(remaining, notes)` is called after each stage run,
    with the stages not yet done among those still to come."""
    deadline = (time.monotonic() - IMPORT_S if started is None else started) + args.budget_s - REPORT_S
    remaining, notes, listed = [], [], stages()
    for at, stage in enumerate(listed):
        if finished(args, stage):
            print(f'[{stage.name}] done before: {stage_path(args, stage)}')
            continue
        if args.only and stage.name not in args.only:
            remaining.append(stage.name)
            continue
        if stage.recipe and (why := rejected_flags(RECIPES[stage.recipe])):  # cannot run in this checkout
            notes.append(f'{stage.name}: skipped: train_CIFAR.py rejects {" ".join(RECIPES[stage.recipe])} ({why})')
            print(f'[{stage.name}] {notes[-1]}')
            continue
        if deadline - time.monotonic() < (stage.min_s or MIN_STAGE_S):
            remaining.append(stage.name)
            continue
        print(f'[{stage.name}] running, at most {deadline - time.monotonic():.0f} s', flush=True)
        outcome = run_stage(args, stage, deadline)
        print(f'[{stage.name}] {outcome}', flush=True)
        if outcome != 'done':
            notes.append(f'{stage.name}: {outcome}')
        if not finished(args, stage):
            remaining.append(stage.name)
        report(remaining + [s.name for s in listed[at + 1:] if not finished(args, s)], notes)
    return remaining, notes


# ---- the table ------------------------------------------------------------------------------------

def ratio(authors, ours, on_gpu):
    return f'{authors / ours:.1f}×' if on_gpu and authors and ours else ''


def verdict(ok, target, on_gpu):
    return f'{target} {"✓" if ok else "✗"}' if on_gpu else target


def unit(value, name):
    return f'{value} {name}' if value is not None else ''


def peak(result):
    gib = result.get('peak_gib')
    return f', {gib} GiB peak' if gib is not None and gib == gib else ''  # NaN on the CPU


def table_rows(name, record):
    """(figure, ours, authors, speed-up, target) rows for one stage's record."""
    if record['status'] != 'ok':
        return [(name, f'failed: {record["error"]}', '', '', '')]
    r = record['result']
    on_gpu = not str(r.get('device', 'cpu')).startswith('cpu')
    rows_of = STAGE_ROWS.get('training' if name.startswith('training-') else name)
    return rows_of(name, r, on_gpu) if rows_of else []


def cuda_test_rows(name, r, on_gpu):
    return [(f'CUDA tests ({", ".join(CUDA_TESTS)})',
             f'{r["passed"]} passed, {r["failed"]} failed, {r["errors"]} errors, '
             f'{r["skipped"]} skipped', '', '', 'all pass')]


def inference_table_rows(name, r, on_gpu):
    rows = []
    for row in r['rows']:
        target = TARGETS['inference_s'].get(row['images'], {}).get(row['column'])
        rows.append((f'inference, {row["images"]:,} images, {row["column"]} ({row["model"]})',
                     f'{row["seconds"]:.2f} s ({row["images_per_s"]:,} images/s{peak(row)})',
                     f'{row["authors_s"]} s' if row['authors_s'] else '',
                     ratio(row['authors_s'], row['seconds'], on_gpu),
                     verdict(row['seconds'] <= target, f'≤ {target} s', on_gpu) if target else ''))
    return rows


def clip_tower_rows(name, r, on_gpu):
    """The fused tower beside the clip package's, same weights, same device: the baseline of the CLIP
    speed-ups."""
    rows = []
    for row in r['rows']:
        if row.get('vs_clip_tower') is None:
            continue
        authors = row['authors_s']
        rows.append((f'CLIP towers, inference, {row["images"]:,} images, {row["column"]}: fused against the clip '
                     f"package's", f'{row["seconds"]:.2f} s against {row["clip_tower_s"]:.2f} s '
                     f'(speed-up {row["vs_clip_tower"]}×{peak(row)})', f'{authors} s' if authors else '',
                     ratio(authors, row['seconds'], on_gpu), ''))
    return rows


def training_rows(name, r, on_gpu):
    """Per f_p path and recipe: the features, then per mode (eager, eval, graphed) and --frozen_kernels way its
    warm epoch, first epoch, warm evaluation and projected paper-length run; each row's speed-up is over the
    eager mode's (graphs), or over the same mode's eager kernels (the kernels stages, one mode)."""
    rows = r['rows']
    enc, recipe = rows[0]['encoder'], name.rsplit('-', 1)[1]
    what = f'train_CIFAR.py on {rows[0]["data"]}, {enc} path, {recipe} recipe'
    target = TARGETS['paper_length_min'].get(enc)
    table = [(f'{what}: features', unit(rows[0]['feature_extraction_s'], 's'),
              unit(AUTHORS_H100['feature_extraction_s'].get(enc), 's'), '', '')]
    for row in rows:
        kernels = row.get('frozen_kernels', 'eager')
        eager = next((b for b in rows if b.get('frozen_kernels', 'eager') == 'eager'
                      and b['mode'] == (row['mode'] if kernels != 'eager' else 'eager')), None)
        label = row['mode'] + (f', {kernels} frozen kernels' if kernels != 'eager' else '')
        proj = ' (projected from warm epochs)' if row['paper_length_is_projection'] else ''
        for name_of, key, u in (('one warm epoch', 'train_s_per_epoch', 's'),
                                ('first epoch', 'train_s_first_epoch', 's'),
                                ('one warm evaluation', 'eval_s_each', 's'),
                                (f'paper-length run{proj}', 'paper_length_min', 'min')):
            authors = AUTHORS_H100[key].get(enc) if key != 'train_s_first_epoch' else None
            versus = ((f'; {eager[key] / row[key]:.2f}× eager kernels' if kernels != 'eager' else
                       f'; {eager[key] / row[key]:.1f}× eager')
                      if row is not eager and eager and on_gpu and row[key] and eager[key] else '')
            check = (verdict(row[key] <= target, f'≤ {target} min', on_gpu)
                     if key == 'paper_length_min' and target else '')
            rate = (f' ({row["step_image_gflop"]} GFLOP of image networks a step at {row["image_tflop_per_s"]} '
                    'TFLOP/s)' if key == 'train_s_per_epoch' and row.get('image_tflop_per_s') else '')
            table.append((f'{what}, {label}: {name_of}', unit(row[key], u) + rate + versus, unit(authors, u),
                          ratio(authors, row[key], on_gpu), check))
    return table


def file_training_rows(name, r, on_gpu):
    images = r['images']
    size = f'{images["pixels"]}×{images["pixels"] + 8}'
    def which(row):  # older results timed one epoch, the first
        return 'warm epoch' if row.get('warm') else 'first epoch, start-up included'
    return [(f'train_Clothing1M.py, {row["variant"]}, {images["train"]:,} generated {size} JPEGs: '
             f'{which(row)} (projected 300-epoch authors run)',
             f'{row["train_s_per_epoch"]} s ({row["train_images_per_s"]:,} images/s; projected '
             f'{row["projected_authors_run_h"]} h; first epoch {row.get("train_s_first_epoch", row["train_s_per_epoch"])} s)', '', '', '')
            for row in r['rows']]


def retrieval_rows(name, r, on_gpu):
    return [(f'exact kNN {r["n"]:,} × {r["dim"]}, k = {r["k"]}', f'{r["seconds"]} s (agreement with cdist '
             f'{r["agreement_with_cdist"]:.3f}{peak(r)})', '', '',
             verdict(r['seconds'] <= TARGETS['knn_1m_s'], f'≤ {TARGETS["knn_1m_s"]:.0f} s', on_gpu))]


def per_step_search_rows(name, r, on_gpu):
    speedup = f', {r["float32_ms"] / r["shortlist_ms"]:.1f}× float32' if on_gpu else ''
    return [(f'per-step neighbour search, {r["batch"]} queries × {r["keys"]:,} keys × {r["dim"]} ({r["features"]}), '
             f'k = {r["k"]}: float32, then bf16 shortlist ranked in float32',
             f'{r["float32_ms"]} ms, {r["shortlist_ms"]} ms{speedup}; top-{r["k"]} sets equal to float32\'s: '
             f'{100 * r["shortlist_agreement"]:.1f}% (bf16 alone {100 * r["bf16_alone_agreement"]:.1f}%)',
             '', '', '≥ 99% equal')]


def frozen_kernel_rows(name, r, on_gpu):
    """Per network and --frozen_kernels way: a call's time and rate, against eager, and its agreement."""
    what = {'fp_simclr': f'SimCLR f_p ({r["fp_arch"]}, eval-mode BatchNorm)',
            'diff_encoder': f'frozen diffusion encoder ({r["diff_arch"]}, training-mode BatchNorm)'}
    rows = []
    for row in r['rows']:
        versus = f'; {row["speedup_over_eager"]}× eager' if on_gpu and 'speedup_over_eager' in row else ''
        if 'cudnn_fused' in row:  # whether the folded trunk ran cuDNN's fused calls, or why not
            versus += '; cuDNN fused calls' + ('' if row['cudnn_fused'] else f' not used ({row["cudnn_fallback"]})')
        rows.append((f'{what[row["network"]]}, batch {r["batch_size"]} of {r["image_size"]}², {row["way"]}',
                     f'{row["ms_per_call"]} ms a call ({row["tflop_per_s"]} TFLOP/s; first call '
                     f'{row["first_call_s"]} s){versus}; min cosine to float32 {row["min_cosine_to_float32"]}',
                     '', '', ''))
    return rows


def extraction_rows(name, r, on_gpu):
    target = TARGETS['extraction_images_per_s']
    what = f'JPEG decoding + {r["encoder"]} extraction, {r["images"]:,} images, {r["workers"]} workers'
    return [(what, f'{r["images_per_s"]:,} images/s{peak(r)}', '', '',
             verdict(r['images_per_s'] >= target, f'≥ {target:,.0f} images/s', on_gpu)),
            (f'{what}: each half alone', f'decoding {r["decode_images_per_s"]:,} images/s, the encoder '
             f'{r["encode_images_per_s"]:,} images/s: bound by {r["bound_by"]}', '', '', '')]


PROFILE_ROWS = 6


def profile_rows(name, r, on_gpu):
    """The ops a profiled stage (an epoch of the authors' CIFAR command, or inference) spent most of its
    time in."""
    (row,) = r['rows']
    what = (f'a warm {row["mode"]} epoch of train_CIFAR.py, {row["encoder"]} path, authors recipe'
            if 'encoder' in row else f'inference, {row["images"]:,} images, {row["column"]}')
    clock = 'GPU' if on_gpu else 'CPU'
    return [(f'{what}, under the profiler: {op["op"][:80].replace("|", "/")}',
             f'{op["self_s"]} s {clock} self time ({100 * op["share"]:.1f}%), {op["calls"]:,} calls', '', '', '')
            for op in row['profile'][:PROFILE_ROWS]]


def simclr_speed_rows(name, r, on_gpu):
    target = TARGETS['simclr_epoch_s']
    epoch, minutes, knn = r['knn_curve'][-1]
    graph = 'CUDA graph' if r['cuda_graph'] else 'eager'
    return [(f'SimCLR pre-training ({r["architecture"].split(",")[0]}, batch {r["batch_size"]}, {graph}), '
             f'one {r["dataset"]} epoch', f'{r["warm_epoch_s"]} s ({r["epochs_per_s"]} epochs/s; the first epoch '
             f'{r["first_epoch_s"]} s); kNN top-1 {100 * knn:.2f}% after {epoch} epochs, {minutes} min', '', '',
             verdict(r['warm_epoch_s'] <= target, f'≤ {target} s', on_gpu))]


def unpack_row(results_json, folder):
    """The paper row's summary.json, config.json, log.jsonl and encoder.json from the suite's results, into
    `folder`: a run folder `benchmarks.paper --record` reads."""
    return write_run(read_json(results_json)['stages']['paper_row']['result'], folder)


def write_run(row, folder):
    """summary.json, config.json, encoder.json and log.jsonl of the paper row's run, from what a device
    shipped (tools/paper_device.py folds them into its record), and paper_run.json (the device's commit, when
    it shipped, the command): a folder `benchmarks.paper --record` reads. A folder holding other files (a
    run's own, say) is refused: its summary would be written over."""
    from benchmarks.paper import RUN_FILE
    names = ('summary.json', 'config.json', 'encoder.json', 'log.jsonl', RUN_FILE)
    others = sorted(set(os.listdir(folder)) - set(names)) if os.path.isdir(folder) else []
    if others:
        raise SetupError(f'{folder} holds files of its own ({", ".join(others[:3])}); unpack into a new folder')
    os.makedirs(folder, exist_ok=True)
    for name in ('summary', 'config', 'encoder'):
        save_json(row.get(name) or {}, os.path.join(folder, f'{name}.json'))
    with open(os.path.join(folder, 'log.jsonl'), 'w') as f:
        f.write(''.join(json.dumps(r, sort_keys=True) + '\n' for r in row.get('log') or []))
    config = row.get('config') or {}
    # the run's own command as its first invocation had it (its config keeps it; a stage may have resumed it)
    argv, script = config.get('argv'), config.get('script')
    words = [script, *argv] if isinstance(argv, list) else []
    command = shlex.join(['python', *words]) if words and all(isinstance(w, str) for w in words) else ''
    save_json({'row': row.get('row'), 'seed': config.get('seed'), 'commit': row.get('commit', 'unknown'),
               'finished_utc': row.get('shipped_utc', ''), 'command': command}, os.path.join(folder, RUN_FILE))
    return folder


# the stages whose rows time the paper's inference table, the first preferred where both time a row, and
# how each differs from the row's own command
INFERENCE_STAGES = {'inference': ['every column timed in one process, one after another'],
                    'clip_towers': ["timed after the clip package's tower on the same images, in the same process"]}


def unpack_inference(results_json, folder):
    """The paper's inference-time rows a suite measured: per stage (INFERENCE_STAGES) a folder with its
    inference.json and paper_run.json (command, when it finished), which `benchmarks.paper --record` reads
    for each row it times. Returns (stage folder, row id, labels) per timed row."""
    from benchmarks.paper import RUN_FILE, timed_row
    from benchmarks.paper_rows import ROWS
    stages, unpacked = read_json(results_json)['stages'], []
    for name, labels in INFERENCE_STAGES.items():
        record = stages.get(name) or {}
        if record.get('status') != 'ok':
            continue
        result, where = record['result'], os.path.join(folder, name)
        os.makedirs(where, exist_ok=True)
        save_json(result, os.path.join(where, 'inference.json'))
        flags = [f'--{k} {" ".join(map(str, v)) if isinstance(v, list) else v}' for k, v in result['args'].items()
                 if k in ('columns', 'sizes', 'clip_towers')]
        save_json({'seed': 1, 'finished_utc': record['finished_utc'],
                   'command': f'python -m benchmarks.inference {" ".join(flags)}'}, os.path.join(where, RUN_FILE))
        done = {row_id for _, row_id, _ in unpacked}  # a row timed by an earlier stage is taken from it
        unpacked += [(where, row.id, labels) for row in ROWS.values()
                     if row.metric == 'seconds' and row.id not in done and timed_row(row, result['rows'])]
    return unpacked


def paper_row_rows(name, r, on_gpu):
    """The paper's first row: its test accuracy at the best validation epoch (labelled shorter than the
    paper's 200 epochs where it is), the encoder's kNN accuracy, or why it stopped."""
    summary, encoder = r.get('summary') or {}, r.get('encoder') or {}
    if not summary:
        return [(f"the paper's row {r.get('row')}", f"not measured: {r.get('stopped', 'no summary')}", '', '', '')]
    epochs = summary.get('epochs')
    length = '' if epochs == 200 else f', {epochs} epochs: shorter than the paper\'s 200'
    return [(f"the paper's row {r['row']} (f_p SimCLR {encoder.get('architecture', '?').split(',')[0]}, "
             f"{encoder.get('epochs', '?')} pre-training epochs, kNN {100 * encoder.get('knn_top1_test', 0):.2f}%)",
             f"test {100 * summary['test_acc']:.2f}% at epoch {summary['best_epoch']}{length}", '', '', '')]


# stage (training-<path>-<recipe> stages as 'training') → its rows in the table
STAGE_ROWS = {'cuda_tests': cuda_test_rows, 'clip_towers': clip_tower_rows, 'inference': inference_table_rows,
              'per_step_search': per_step_search_rows, 'training': training_rows,
              'file_training': file_training_rows, 'retrieval': retrieval_rows, 'extraction': extraction_rows,
              'simclr_speed': simclr_speed_rows, 'simclr_speed-eager': simclr_speed_rows,
              'profile-SimCLR-authors': profile_rows, 'profile-inference-ViT-L14': profile_rows,
              'paper_row': paper_row_rows, 'frozen_kernels': frozen_kernel_rows}


def markdown_table(records):
    devices = sorted({str(rec['result'].get('device')).split(', torch')[0] for rec in records.values()
                      if rec['status'] == 'ok' and rec['result'].get('device')})
    lines = [f'Device: {"; ".join(devices) or "unknown"}. Authors: their code on one H100 (docs/REFERENCE.md). '
             'Speed-up = authors ÷ ours, shown for GPU figures only.', '',
             '| figure | ours | authors, H100 | speed-up | target |', '|---|---|---|---|---|']
    for name, record in records.items():
        lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in table_rows(name, record)]
    return '\n'.join(lines)


def collect_records(args):
    return {s.name: read_json(stage_path(args, s)) for s in stages() if os.path.isfile(stage_path(args, s))}


def report(args, command, remaining, notes):
    """The results JSON in OUT and, with --ship, what must come back: written after every stage, so a
    command the device cuts off still returns every stage it finished."""
    records = collect_records(args)
    try:
        table = markdown_table(records)
    except Exception as exc:  # a result the table cannot format: the records come back all the same
        table = f'(no table: {type(exc).__name__}: {exc}; the records are in "stages")'
    summary = {'date_utc': datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M'), 'command': command,
               'remaining': remaining, 'notes': notes, 'table': table, 'stages': records}
    save_json(summary, os.path.join(args.out, RESULTS))
    if args.ship:
        ship(args, summary)
    return summary


def ship(args, summary):
    """Copy what must come back from the device into args.ship: one JSON and the encoder's shards."""
    os.makedirs(args.ship, exist_ok=True)
    save_json(summary, os.path.join(args.ship, RESULTS))
    source = os.path.join(args.out, 'simclr_shards')
    if os.path.isdir(source):
        shutil.copytree(source, os.path.join(args.ship, 'simclr_shards'), dirs_exist_ok=True)


def continue_from(args):
    """Seed OUT with the finished stages of a results JSON shipped by an earlier command (a fresh
    machine then skips them). A missing file is the first command's case: nothing to seed."""
    if not os.path.isfile(args.continue_from):
        print(f'--continue_from {args.continue_from}: no such file yet, starting afresh')
        return
    known = {s.name for s in stages()}
    for name, record in read_json(args.continue_from).get('stages', {}).items():
        if name in args.rerun:
            continue
        if name not in known or not isinstance(record, dict) or record.get('status') not in ('ok', 'failed'):
            print(f'--continue_from: ignoring {name!r}, not a stage record of this suite')
            continue
        path = os.path.join(args.out, name + '.json')
        if record.get('complete', True) and not os.path.exists(path):
            save_json(record, path)


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', help='folder of the stage results (keep it between commands)')
    p.add_argument('--budget_s', type=float, default=540,
                   help='stop cleanly before this many seconds (default: margin under a 10-minute command)')
    p.add_argument('--smoke', action='store_true', help='every stage at tiny size on the CPU')
    p.add_argument('--data_root', help='folder holding cifar-10-batches-py/ (default: converted into OUT/data)')
    p.add_argument('--cifar_tool', help='the shared cifar10_batches.py, beside data/cifar10_jpeg.npz '
                                        f'(default: the first of {", ".join(CIFAR_TOOL)})')
    p.add_argument('--inputs_dir', default='.device_data/inputs',
                   help="folder holding the authors' cifar10-1-0.35.npy for the paper's row (carried to the device)")
    p.add_argument('--frozen_kernels', default='eager', choices=FROZEN_KERNELS,
                   help="the paper row's --frozen_kernels (tools/paper_device.py); the timing stages choose their own")
    p.add_argument('--ship', metavar='DIR', help=f'copy {RESULTS} and the encoder shards here ($OUT on a device)')
    p.add_argument('--continue_from', metavar='FILE', help=f'a {RESULTS} from an earlier command: skip its stages')
    p.add_argument('--rerun', nargs='+', default=[], metavar='STAGE',
                   help='with --continue_from: run these stages again (their code or tests changed since)')
    p.add_argument('--only', nargs='+', default=[], metavar='STAGE',
                   help='run these stages and no other (a lease spent on one question); the rest stay remaining')
    p.add_argument('--reassemble', metavar='SHARDS_DIR', help='put shipped encoder shards back together (with --to)')
    p.add_argument('--to', metavar='FILE', help='the reassembled encoder file (with --unpack_row: a folder)')
    p.add_argument('--unpack_inference', metavar='RESULTS_JSON',
                   help="the paper's inference-time rows it measured into --to DIR, with the commands recording them")
    p.add_argument('--unpack_row', metavar='RESULTS_JSON',
                   help="write the paper row's run files from a shipped results JSON into --to, for "
                        'python -m benchmarks.paper --record')
    return p


def wrote(p, flag, to, write, what='DIR'):
    """A command of the way back, which writes --to: refused without it, else what it wrote, printed."""
    if not to:
        p.error(f'{flag} needs --to {what}')
    print(f'wrote {write()}')


def main(argv=None):
    started = time.monotonic() - IMPORT_S  # the budget counts the imports and what comes before the stages
    p = parser()
    args = p.parse_args(argv)
    if args.reassemble:
        return wrote(p, '--reassemble', args.to, lambda: shards.reassemble(args.reassemble, args.to), 'FILE')
    if args.unpack_row:
        try:
            return wrote(p, '--unpack_row', args.to, lambda: unpack_row(args.unpack_row, args.to))
        except SetupError as exc:  # a --to holding a run of its own: one line, as every command's refusal
            p.exit(2, f'error: {exc}\n')
    if args.unpack_inference:
        if not args.to:
            p.error('--unpack_inference needs --to DIR')
        for where, row_id, labels in unpack_inference(args.unpack_inference, args.to):
            label = ''.join(f' --label "{text}"' for text in labels)
            print(f'python -m benchmarks.paper --record {where} --row {row_id} --commit COMMIT{label}')
        return None
    if not args.out:
        p.error('--out DIR is required')
    for flag in ('rerun', 'only'):
        unknown = sorted(set(getattr(args, flag)) - {s.name for s in stages()})
        if unknown:
            p.error(f'--{flag} {unknown[0]}: no such stage (the stages: {", ".join(s.name for s in stages())})')
    os.makedirs(os.path.join(args.out, 'logs'), exist_ok=True)
    if args.continue_from:
        continue_from(args)
    command = 'python -m tools.gpu_suite ' + ' '.join(argv if argv is not None else sys.argv[1:])
    remaining, notes = run_suite(args, lambda remaining, notes: report(args, command, remaining, notes), started)
    summary = report(args, command, remaining, notes)
    print('\n' + summary['table'] + '\n')
    for note in notes:
        print(f'note: {note}')
    print(f'remaining: {", ".join(remaining)} (run the same command again to continue)' if remaining
          else 'all stages done')
    return summary


if __name__ == '__main__':
    main()
