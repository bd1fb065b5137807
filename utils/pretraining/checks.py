"""pretrain_SimCLR.py's flags checked before any work: each value, the batch against the images, and
a --resume's flags against those its run was started with (refused, never dropped)."""
import argparse
import math

import os

from utils.errors import ResumeRefused, SetupError
from utils.pretraining.trainer import load_state
from utils.runs.checks import config_problems, limit_problems
from utils.runs.config import could_give


# pretrain_SimCLR.py's flags that must be at least 1, beyond those utils/runs/checks knows
AT_LEAST_ONE = ('n_images', 'knn_every', 'save_every')

# flags a --resume may give: where and how it runs, how often it saves and monitors, where its data
# lies and where the encoder goes (none of them changes a weight), and --nepoch to lengthen the run
PER_COMMAND = ('resume', 'device', 'stop_after', 'cuda_graph', 'debug', 'save_every', 'knn_every', 'data_root',
               'download', 'nepoch', 'output')

# those a resume takes from its own command even where not given (its defaults)
ALWAYS_FROM_THIS_COMMAND = ('resume', 'device', 'stop_after', 'cuda_graph', 'debug')


def flag_problems(args, limits=True):
    """Every bad flag value, worded as utils/runs/checks words the training scripts' (an unset flag,
    None, is not checked: --lr then comes from --batch_size). `limits`: the sizes' upper limits too, which a
    run saved before they existed is not held to (it is not damaged)."""
    values = argparse.Namespace(**{k: v for k, v in vars(args).items() if v is not None})
    problems = config_problems(values) + (limit_problems(values, vars(values)) if limits else [])
    problems += [f'--{name} {getattr(values, name)} must be at least 1' for name in AT_LEAST_ONE
                 if getattr(values, name, 1) < 1]
    if not math.isfinite(args.temperature) or args.temperature <= 0:
        problems.append(f'--temperature {args.temperature} must be a finite number above 0')
    if not math.isfinite(args.weight_decay) or args.weight_decay < 0:
        problems.append(f'--weight_decay {args.weight_decay} must be a finite number, 0 or above')
    if args.stop_after is not None and not 0 <= args.stop_after < math.inf:
        problems.append(f'--stop_after {args.stop_after} must be a finite number of minutes, 0 or above')
    return problems + batch_problems(args.batch_size, args.n_images)


def batch_problems(batch_size, n_images):
    """An epoch is whole batches only: with fewer images than --batch_size it would hold no step."""
    if n_images is None or not 1 <= n_images < batch_size:
        return []
    return [f'--batch_size {batch_size} is more than the {n_images} images pre-trained on; lower --batch_size']


def check_images(args, splits):
    n = len(splits.train_images) + len(splits.val_images)
    problems = batch_problems(args.batch_size, min(n, args.n_images or n))
    if problems:
        raise SetupError(problems[0])


def resumed(args, given, defaults):
    """The saved state and the run's flags, with what this command may decide (PER_COMMAND); `defaults`:
    the script's parser, whose defaults stand for flags newer than the run."""
    state, saved = load_state(args.resume)
    problems = saved_problems(saved, defaults, state)
    if problems:
        raise ResumeRefused(f'{os.path.join(args.resume, "state.pt")} is damaged or was edited '
                            f'({"; ".join(problems[:3])}); it cannot be resumed: start a new run')
    check_resume_flags(args, given, saved, defaults)
    ours = {name: getattr(args, name) for name in PER_COMMAND if name in given or name in ALWAYS_FROM_THIS_COMMAND}
    return argparse.Namespace(**{**saved, **ours}), state


def check_resume_flags(args, given, saved, defaults):
    """Refuse, never drop, flags given with --resume that would change the run (all of them in one
    line), and a --nepoch that would shorten it."""
    run = {name: saved.get(name, defaults.get_default(name)) for name in given}  # a flag newer than the run: default
    changed = [f'--{name} {shown(getattr(args, name))} (run: {shown(run[name])})' for name in sorted(given)
               if name not in PER_COMMAND and getattr(args, name) != run[name]]
    if changed:
        raise ResumeRefused(f"--resume {args.resume}: these flags differ from the run's: {', '.join(changed)}; "
                            f'drop them or start a new run')
    if 'nepoch' in given and args.nepoch < saved['nepoch']:
        raise ResumeRefused(f'--nepoch {args.nepoch}: the run in {args.resume} is of {saved["nepoch"]} epochs; a '
                            f'resume may lengthen it, not shorten it: give at least {saved["nepoch"]} or drop --nepoch')


def saved_problems(saved, parser, state):
    """The flags a run's state.pt holds that no command line could have given, or that a new run's checks
    refuse (a batch of 0, a negative temperature), and more epochs trained than the run has: an edited file
    failed with a traceback, trained on, or exported at once."""
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != 'help'}
    problems = [f'args.{name} is {value!r}, not a value of --{name}' for name, value in sorted(saved.items())
                if name in actions and value is not None and not could_give(actions[name], value)]
    if not problems:  # values of the right kinds: in the ranges a command line's are held to
        problems = flag_problems(argparse.Namespace(**{**{n: parser.get_default(n) for n in actions}, **saved}),
                                 limits=False)
    nepoch = saved.get('nepoch')
    if not problems and isinstance(nepoch, int) and state['epoch'] > nepoch:
        problems.append(f'epoch {state["epoch"]} is beyond the run\'s {nepoch} epochs')
    return problems


def shown(value):
    return 'default' if value is None else value
