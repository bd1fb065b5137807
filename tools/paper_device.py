"""The paper's first row measured end to end on one GPU: CIFAR-10, the authors' type-I 35% PMD file,
f_p a SimCLR encoder pre-trained here, the authors' recipe. One resumable command for a lent device.

    python -m tools.paper_device --out runs/paper_device --inputs_dir .device_data/inputs --ship $OUT
    python -m tools.paper_device --out /tmp/d --smoke                  # the whole path, tiny, on the CPU
    python -m tools.paper_device --unpack SHIPPED/paper_device.json --to ROW     # back here: the run's files
    python -m benchmarks.paper --record ROW --row cifar10-pmd1-35-simclr           # into the paper's table

Stages, each under what is left of --budget_s: CIFAR-10 from .device_data (tools/gpu_suite.py's
conversion) and the noise file from --inputs_dir, verified by its git blob hash (nothing is
downloaded); SimCLR pre-training (pretrain_SimCLR.py, --simclr_arch, --simclr_epochs; resumed by the
next command if cut off); then train_CIFAR.py with that encoder as --fp_checkpoint for --nepoch 200,
stopped by SIGTERM when the budget runs out (its last.pt keeps the epoch) and closed with `--resume
RUN --nepoch <epochs trained>`, which writes summary.json for the epochs done: a run shorter than the
paper's 200 epochs is labelled so by `benchmarks.paper --record`, never passed off as the paper's. The
next command goes on from last.pt with --nepoch 200 (the cosine horizon is the authors' 1000 epochs
whatever --nepoch says, so a run extended later equals one that ran 200 epochs at once).

--ship DIR receives, after every stage, what comes back: paper_device.json (each stage: command, seconds,
outcome; the run's summary, config and evaluation log; the encoder's sidecar; the records of the commands
before with this --out, --out/commands.json) and simclr_shards/ (a
finished encoder as fp16 shards, tools/shards.py; --unpack puts the run folder back together, and
`tools.gpu_suite --reassemble` the encoder). A file there that no
command with this --out shipped is refused before any stage runs (--out/shipped.json records what was;
a --ship filled by a version before that record is taken as this --out's where it holds only those files).
A stage that fails, or inputs that are missing, make the command exit 1 once it has shipped; a stage
cut off by the budget does not (the next command goes on from it).
"""
import time

_IMPORTS_FROM = time.monotonic()

import argparse
import contextlib
import json
import math
import os
import sys

from tools import shards
from tools.gpu_suite import find_cifar, run_command, tail, write_run, wrote
from utils.errors import SetupError
from utils.pretraining.export import export_complete, sidecar_path
from utils.runs.checks import seed_problems
from utils.runs.cli import Parser, run_cli
from utils.runs.folders import first_few, foreign_files
from utils.runtime.frozen_kernels import FROZEN_KERNELS
from utils.storage.loading import load_json, load_torch, read_jsonl
from utils.storage.saving import save_json

IMPORT_S = time.monotonic() - _IMPORTS_FROM  # part of --budget_s: a device's limit counts from the command's start
PY = sys.executable
ROW = 'cifar10-pmd1-35-simclr'
NOISE = 'cifar10-1-0.35'
CLOSE_S = 90          # kept back to close a cut-off run (summary, denoised labels) and to ship
MIN_TRAIN_S = 60      # no training stage is started with less than this left
FIRST_EVALUATED = 6   # epochs after which a run holds best.pt (warm-up 5, evaluation every 5)
SMOKE_SIMCLR = ['--dataset', 'digits', '--n_images', '64', '--image_size', '8', '--batch_size', '32',
                '--warmup_epochs', '0', '--knn_every', '1', '--device', 'cpu']
# one batch of 50 an epoch (5 draws of each digit): the smoke checks the path, not the accuracy
SMOKE_TRAIN = ['--nepoch', '2', '--warmup_epochs', '1', '--batch_size', '50', '--per_class', '5', '--device', 'cpu',
               '--recipe', 'authors']
# what ship() writes under --ship (the shards' folder is replaced whole); recorded in --out, not in --ship.
# A device sends back at most 8 files: the run's small files travel inside paper_device.json, beside the
# manifest and the shards (2 for a ResNet-18, 4 for a ResNet-50 at 15 MB a shard)
SHIPPED = ('paper_device.json', 'simclr_shards')
# what versions before 2026-12-07 shipped beside those: a --ship they filled is still taken as this --out's
SHIPPED_BEFORE = tuple(f'run/{name}' for name in ('summary.json', 'config.json', 'log.jsonl', 'encoder.json'))
SHIP_RECORD = 'shipped.json'
# in --out: the records of the commands before this one, which each shipped record carries ('earlier'): a
# command run again after the run ended trains nothing, and its record alone would lose the stages'
COMMANDS = 'commands.json'
TRAINING_STAGES = ('train', 'close')  # the stages whose command and end date a figure is credited to


def paths(args):
    simclr = os.path.join(args.out, 'simclr')
    return {'simclr_run': os.path.join(simclr, f'{"digits" if args.smoke else "cifar10"}_{args.simclr_arch}'),
            'encoder': args.encoder or os.path.join(simclr, f'simclr_{args.simclr_arch}.pt'), 'simclr': simclr,
            'run': os.path.join(args.out, 'runs', f'{ROW}_s{args.seed}')}


def simclr_command(args, where, minutes):
    p = paths(args)
    common = ['--nepoch', str(args.simclr_epochs), '--stop_after', f'{minutes:.3f}']
    if os.path.isfile(os.path.join(p['simclr_run'], 'state.pt')):
        return [PY, 'pretrain_SimCLR.py', '--resume', p['simclr_run'], *common,
                *(['--device', 'cpu'] if args.smoke else [])]
    data = SMOKE_SIMCLR if args.smoke else ['--dataset', 'cifar10', '--data_root', where, '--no-download']
    return [PY, 'pretrain_SimCLR.py', *data, '--arch', args.simclr_arch, '--seed', str(args.seed), '--out_dir',
            p['simclr'], '--output', p['encoder'], *common]


def simclr_done(args):
    """Whether the encoder is pre-trained for --simclr_epochs: pretrain_SimCLR.py exports it, with its
    sidecar counting the epochs, only once the run has them all (an export stopped halfway is not)."""
    p = paths(args)
    if args.encoder:  # pre-trained by an earlier lease (its shards reassembled): nothing to pre-train
        return os.path.isfile(args.encoder)
    epochs = load_json(sidecar_path(p['encoder'])).get('epochs')
    return isinstance(epochs, int) and epochs >= args.simclr_epochs and export_complete(p['encoder'])


def train_command(args, where):
    """train_CIFAR.py (demo_digits.py with --smoke) with the pre-trained encoder: fresh, or resumed to 200."""
    p = paths(args)
    script = 'demo_digits.py' if args.smoke else 'train_CIFAR.py'
    kernels = ['--frozen_kernels', args.frozen_kernels]  # how, not what: it may change on resume
    if os.path.isfile(os.path.join(p['run'], 'last.pt')):
        return [PY, script, '--resume', p['run'], '--nepoch', str(args.nepoch), *kernels]
    data = SMOKE_TRAIN if args.smoke else ['--noise_type', NOISE, '--data_root', where, '--no-download',
                                           '--inputs_dir', args.inputs_dir, '--nepoch', str(args.nepoch)]
    return [PY, script, *data, '--fp_encoder', 'SimCLR', '--fp_checkpoint', p['encoder'], '--seed', str(args.seed),
            '--n_samples', '0', '--out_dir', os.path.dirname(p['run']), '--run_name', os.path.basename(p['run']),
            '--cache_dir', os.path.join(args.out, 'cache'), *kernels]


def epochs_trained(run):
    """Epochs last.pt holds (0 when none, or when it holds no epoch count): what a closing --resume
    --nepoch keeps."""
    path = os.path.join(run, 'last.pt')
    saved = load_torch(path) if os.path.isfile(path) else {}
    epoch = saved.get('epoch') if isinstance(saved, dict) else None
    return epoch + 1 if isinstance(epoch, int) and epoch >= 0 else 0


def close_command(args):
    """Ends a run cut off before --nepoch where it stands: summary.json for the epochs trained."""
    run = paths(args)['run']
    return [PY, 'demo_digits.py' if args.smoke else 'train_CIFAR.py', '--resume', run, '--nepoch',
            str(epochs_trained(run))]


def stage(record, name, command, timeout_s, log):
    started = time.monotonic()
    rc = run_command(command, timeout_s, log)
    record[name] = {'command': ' '.join(command), 'rc': rc, 'seconds': round(time.monotonic() - started, 1),
                    'ended_utc': time.strftime('%Y-%m-%d %H:%M', time.gmtime())}
    if rc not in (0, None):  # a cut-off (None) is no failure: the next command goes on from it
        record[name]['log_tail'] = tail(log)
        record.setdefault('failed', []).append(name)
    print(f'[{name}] {"cut off" if rc is None else f"exit {rc}"} after {record[name]["seconds"]} s', flush=True)
    return rc


def check_noise_file(args):
    """The authors' type-I 35% file in --inputs_dir, verified offline; the one-line problem, or None."""
    if args.smoke:
        return None
    from utils.errors import PublishedInputError
    from utils.storage.published import fetch, looking_only
    try:
        with looking_only():  # a device is offline: an absent file is named at once, not tried for a minute
            fetch(NOISE, args.inputs_dir)
    except PublishedInputError as exc:
        return f'{exc} (copy it into .device_data/inputs/ before the device call: python -m noisy_label.fetch ' \
               f'{NOISE} --inputs_dir .device_data/inputs)'
    return None


def run(args, started=None):
    """Every stage that fits in the budget counted from `started` (time.monotonic(); default: now, less the
    imports); returns the record of this command."""
    deadline = (time.monotonic() - IMPORT_S if started is None else started) + args.budget_s
    from benchmarks.paper import commit
    record = {'row': ROW, 'started_utc': time.strftime('%Y-%m-%d %H:%M', time.gmtime()), 'smoke': args.smoke,
              'commit': commit(),  # the device's checkout: what benchmarks.paper --record credits the figure to
              'earlier': earlier_commands(args)}
    logs = os.path.join(args.out, 'logs')
    os.makedirs(logs, exist_ok=True)
    problem = check_noise_file(args) or find_cifar(args, deadline)
    if problem:
        record.update(stopped=problem, failed=['inputs'])
        return record
    where = args.data_root
    if not simclr_done(args):
        # all the budget but the least training and the closing: a pre-training cut off exports no encoder
        minutes = max(0.1, (deadline - time.monotonic() - CLOSE_S - MIN_TRAIN_S) / 60)
        minutes = min(minutes, args.simclr_minutes or math.inf)
        stage(record, 'simclr', simclr_command(args, where, minutes), deadline - time.monotonic(),
              os.path.join(logs, 'simclr.log'))
        kept(args, record)
        if not simclr_done(args):
            record['stopped'] = 'SimCLR pre-training not finished; run the same command again to go on'
            return record
    if load_json(os.path.join(paths(args)['run'], 'summary.json')).get('epochs', 0) >= args.nepoch:
        # a command run again after the run ended: its resume would redo the features and the outputs
        record['note'] = f'the run had finished its {args.nepoch} epochs before: nothing to train'
        return record
    left = deadline - time.monotonic() - CLOSE_S
    if left < MIN_TRAIN_S and not args.smoke:
        record['stopped'] = 'no time left to train; run the same command again'
        return record
    before = epochs_trained(paths(args)['run'])
    rc = stage(record, 'train', train_command(args, where), max(left, MIN_TRAIN_S), os.path.join(logs, 'train.log'))
    record['train']['epochs'] = [before, epochs_trained(paths(args)['run'])]  # a cut-off one may have trained none
    kept(args, record)
    summary, trained = load_json(os.path.join(paths(args)['run'], 'summary.json')), epochs_trained(paths(args)['run'])
    # closed where it stands once it holds an evaluation (the authors' first: after epoch 5, counting from 0)
    if rc is None and trained > summary.get('epochs', 0) and trained >= FIRST_EVALUATED:
        stage(record, 'close', close_command(args), max(30.0, deadline - time.monotonic()),
              os.path.join(logs, 'close.log'))
    return record


def kept(args, record):
    """What a stage left, recorded in --out and shipped as soon as it ends: a device that cuts the command off
    still returns it."""
    os.makedirs(args.out, exist_ok=True)
    save_json({'commands': [*record.get('earlier', []), this_command(record)]}, os.path.join(args.out, COMMANDS))
    if args.ship:
        ship(args, record)


def this_command(record):
    return {k: v for k, v in record.items() if k != 'earlier'}


def earlier_commands(args):
    """The records of the commands run before with this --out (oldest first; [] before the first)."""
    commands = load_json(os.path.join(args.out, COMMANDS)).get('commands')
    return [c for c in commands if isinstance(c, dict)] if isinstance(commands, list) else []


def trained_by(row):
    """The commit and end date that a shipped record credits its run's figure to: those of the last command
    that trained or closed the run (a command run again after the end trains nothing); the shipped record's
    own where no such stage is recorded (a record shipped before the stages were dated). A failed stage, or
    one cut off before an epoch ended, changed no figure (trained)."""
    for command in reversed([*(row.get('earlier') or []), row]):
        stages = [command.get(name) for name in TRAINING_STAGES]
        ended = [s['ended_utc'] for s in stages if isinstance(s, dict) and s.get('ended_utc') and trained(s)]
        if ended and command.get('commit'):
            return {'commit': command['commit'], 'shipped_utc': max(ended)}
    return {}


def trained(stage_record):
    """Whether a stage changed the run: it ended (rc 0), or was cut off after training an epoch (one cut off
    while its features were made trained none)."""
    epochs = stage_record.get('epochs')
    if stage_record.get('rc') == 0:
        return True
    return stage_record.get('rc') is None and not (isinstance(epochs, list) and len(epochs) == 2
                                                   and epochs[1] <= epochs[0])


def recorded(args):
    """Every name the record says commands with this --out shipped into this --ship."""
    ships = load_json(os.path.join(args.out, SHIP_RECORD)).get('ships')
    names = ships.get(args.ship) if isinstance(ships, dict) else None
    return {name for name in names if isinstance(name, str)} if isinstance(names, list) else set()


def shipped_before(args):
    """What commands with this --out shipped into this --ship: what ship() may replace there."""
    return recorded(args) & set(SHIPPED)


def check_ship(args):
    """Refuse, before any stage runs, a --ship holding files ship() would replace that this --out did not ship."""
    mine = shipped_before(args)
    foreign = [name for name in SHIPPED if name not in mine and occupied(args.ship, name)]
    if foreign and kept_no_record(args):
        adopt_ship(args, foreign)
    elif foreign:
        raise SetupError(f'--ship {args.ship} holds {", ".join(foreign)}, not shipped by a command with --out '
                         f'{args.out}; choose another --ship (an empty folder), or move those away')


def kept_no_record(args):
    """Whether --out is a working folder of a version before SHIP_RECORD: used (run() makes logs/ first), no
    record. Its --ship is then unrecorded, not foreign; a fresh --out has shipped nothing anywhere."""
    return os.path.isdir(os.path.join(args.out, 'logs')) and not os.path.lexists(os.path.join(args.out, SHIP_RECORD))


def adopt_ship(args, names):
    """Take the --ship of a version before SHIP_RECORD as this --out's, recording `names`, where it holds
    only what ship() writes (the same names then as now); anything else there says it is not ours alone."""
    shard_files = [os.path.join('simclr_shards', name) for name in listing(os.path.join(args.ship, 'simclr_shards'))
                   if name == shards.MANIFEST or shards.SHARD_NAME.fullmatch(name)]
    others = foreign_files(args.ship, {*SHIPPED, *SHIPPED_BEFORE, *shard_files} - {'simclr_shards'})  # a folder
    if others:
        raise SetupError(f'--ship {args.ship} holds {first_few(others)} beside the files an earlier version of '
                         f'this command shipped without a record; move those away to go on with it, or choose '
                         f'another --ship (an empty folder)')
    note_shipped(args, [*names, *(name for name in SHIPPED_BEFORE if os.path.lexists(os.path.join(args.ship, name)))])
    print(f'--ship {args.ship}: shipped by an earlier version with --out {args.out}; now recorded in '
          f'{os.path.join(args.out, SHIP_RECORD)}', flush=True)


def listing(folder):
    """The names in a folder; none in a link to one (foreign_files counts the link itself: not ours)."""
    return os.listdir(folder) if os.path.isdir(folder) and not os.path.islink(folder) else []


def occupied(folder, name):
    """Whether writing `name` under `folder` would replace something: the path, or a file where its folder goes."""
    parent = os.path.join(folder, os.path.dirname(name))
    return os.path.lexists(os.path.join(folder, name)) or (os.path.lexists(parent) and not os.path.isdir(parent))


def note_shipped(args, names):
    """Record names in --ship before they are first written: an interrupted ship's files stay this --out's."""
    path = os.path.join(args.out, SHIP_RECORD)
    ships = load_json(path).get('ships')
    ships = ships if isinstance(ships, dict) else {}
    save_json({'ships': {**ships, args.ship: sorted(recorded(args) | set(names))}}, path)


def ship(args, record):
    """This command's record, with the run's small files and the encoder's sidecar folded in, and the
    encoder's shards, into args.ship (tools/gpu_suite.write_run puts the run's files back)."""
    p = paths(args)
    encoder = export_complete(p['encoder'])  # not one stopped between its sidecar and its weights
    note_shipped(args, [*(['simclr_shards'] if encoder else []), 'paper_device.json'])
    for name in recorded(args) & set(SHIPPED_BEFORE):  # an earlier version's run files, stale from now on
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(args.ship, name))
    with contextlib.suppress(OSError):  # their folder, once empty
        os.rmdir(os.path.join(args.ship, 'run'))
    sidecar = load_json(sidecar_path(p['encoder'])) if encoder else {}
    folder = os.path.join(args.ship, 'simclr_shards')
    if encoder and not shipped_since(p['encoder'], os.path.join(folder, shards.MANIFEST)):
        state = load_torch(p['encoder'], 'SimCLR encoder')
        shards.write_shards(state, folder, extra={'sidecar': sidecar})
    shipped_utc = time.strftime('%Y-%m-%d %H:%M', time.gmtime())  # what --record dates the figure by
    save_json({**record, **run_files(p['run']), 'encoder': sidecar, 'shipped_utc': shipped_utc},
              os.path.join(args.ship, 'paper_device.json'))


def shipped_since(encoder, manifest):
    """Whether the shards in --ship were written after the encoder last was: ship() runs after every stage,
    and an encoder unchanged since is not loaded and sharded again (tens of MB each time)."""
    return os.path.isfile(manifest) and os.path.getmtime(manifest) >= os.path.getmtime(encoder)


def run_files(run):
    """The run folder's summary, config and evaluation log ({} and [] where not written yet)."""
    return {'summary': load_json(os.path.join(run, 'summary.json')), 'config': load_json(os.path.join(run, 'config.json')),
            'log': read_jsonl(os.path.join(run, 'log.jsonl'))}


def unpack(shipped, folder):
    """The run folder `benchmarks.paper --record` reads, from a shipped paper_device.json."""
    try:
        with open(shipped) as f:
            row = json.load(f)
    except (OSError, ValueError) as exc:
        raise SetupError(f'--unpack {shipped}: not a readable paper_device.json ({exc}); give the file the device '
                         f'sent back') from None
    if not isinstance(row, dict) or not isinstance(row.get('summary'), dict) or not row['summary']:
        raise SetupError(f'--unpack {shipped}: holds no run summary (the run had not finished an evaluated epoch); '
                         f'run the device command again')
    return write_run({**row, **trained_by(row)}, folder)


def parser():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # every path absolute from here on: the stages run from the repository, not from where this was called
    p.add_argument('--out', type=os.path.abspath,
                   help='working folder (keep it between commands on the same machine); required to run')
    p.add_argument('--inputs_dir', default='.device_data/inputs', type=os.path.abspath,
                   help=f'folder holding the published {NOISE}.npy')
    p.add_argument('--data_root', type=os.path.abspath,
                   help='folder holding cifar-10-batches-py/ (default: converted from .device_data)')
    p.add_argument('--cifar_tool', type=os.path.abspath,
                   help='the cifar10_batches.py conversion tool (default: .device_data/tools/)')
    p.add_argument('--budget_s', type=float, default=540, help='stop every stage before this many seconds')
    p.add_argument('--simclr_arch', default='resnet18', choices=('resnet18', 'resnet50'),
                   help='the SimCLR backbone pre-trained here (resnet18: fits a short lease; the authors: resnet50)')
    p.add_argument('--simclr_epochs', type=int, default=40, help='SimCLR pre-training epochs (its cosine spans these)')
    p.add_argument('--simclr_minutes', type=float,
                   help='at most this long pre-training per command (default: what the budget leaves beside a '
                        'minute of training and the closing)')
    p.add_argument('--encoder', type=os.path.abspath,
                   help='a SimCLR encoder pre-trained before (e.g. reassembled from shipped shards, its .json sidecar '
                        'beside it): no pre-training')
    p.add_argument('--nepoch', type=int, default=200, help="LRA-diffusion epochs (the paper's 200)")
    p.add_argument('--seed', type=int, default=1, help='seed of the pre-training and of the run')
    p.add_argument('--frozen_kernels', default='eager', choices=FROZEN_KERNELS,
                   help="train_CIFAR.py's --frozen_kernels: how the step's frozen networks run (the same function "
                        "to bf16 rounding; eager: the authors' kernels)")
    p.add_argument('--ship', metavar='DIR', type=os.path.abspath,
                   help='copy what must come back here ($OUT on a device)')
    p.add_argument('--smoke', action='store_true', help='the whole path on digits, tiny, on the CPU')
    p.add_argument('--unpack', metavar='PAPER_DEVICE_JSON',
                   help='back here: write the run folder that a shipped paper_device.json holds into --to, for '
                        'python -m benchmarks.paper --record')
    p.add_argument('--to', metavar='DIR', help='with --unpack: the run folder to write')
    return p


def flag_problems(args):
    """Every bad number among the flags, in the words of the training scripts' checks."""
    problems = [f'--{name} {getattr(args, name)} must be a finite number above 0'
                for name in ('budget_s', 'simclr_minutes')
                if getattr(args, name) is not None and not 0 < getattr(args, name) < math.inf]
    problems += [f'--{name} {getattr(args, name)} must be at least 1'
                 for name in ('simclr_epochs', 'nepoch') if getattr(args, name) < 1]
    return problems + seed_problems(args.seed)  # as train_CIFAR.py and pretrain_SimCLR.py check it


def check_folders(args):
    """--out and --ship, before any stage runs: folders (or absent), and nothing in --ship that is not ours; an
    --encoder that is there."""
    for flag, folder in (('--out', args.out), ('--ship', args.ship)):
        if folder and os.path.exists(folder) and not os.path.isdir(folder):
            raise SetupError(f'{flag} {folder} is a file, not a folder; choose another {flag}')
    if args.encoder and not os.path.isfile(args.encoder):  # it would be taken for the pre-training's output
        raise SetupError(f'--encoder {args.encoder}: no such file; give the encoder reassembled from the shipped '
                         f'shards (python -m tools.gpu_suite --reassemble DIR --to FILE), or leave --encoder out to '
                         f'pre-train one')
    if args.ship:
        check_ship(args)


def main(argv=None):
    """Exit status 1 where a stage failed or inputs are missing (after shipping what there is), else 0."""
    started = time.monotonic() - IMPORT_S  # the budget counts the imports and the checks below too
    p = parser()
    args = p.parse_args(argv)
    if args.unpack:
        wrote(p, '--unpack', args.to, lambda: unpack(args.unpack, args.to))
        return 0
    if not args.out:
        p.error('--out DIR is required')
    problems = flag_problems(args)
    if problems:
        raise SetupError('; '.join(problems))
    check_folders(args)
    if args.smoke:
        args.simclr_epochs, args.nepoch = min(args.simclr_epochs, 1), 2
    record = run(args, started)
    kept(args, record)
    print(json.dumps(this_command(record), indent=1))
    return 1 if record.get('failed') else 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
