"""Apply a trained run to a split of its dataset or to a folder of images.

    python predict.py runs/RUN --split test
    python predict.py runs/RUN --folder my_images/
    python predict.py runs/RUN --split test --data_root /data/elsewhere --n_samples 10

The run's best-validation checkpoint (RUN/best.pt) labels the images as the run was trained: its flags
are the run's own. The script that made the run (recorded in it) reads the split, so that script's
dataset flags say where the data lies now (--data_root, the *_root folders, --test new.csv of
train_ImageFolder.py); --device, --num_workers and --n_samples (stochastic samples for class
probabilities; the run's own by default, 0: none) say how to compute. Any other training flag is
refused: it would change the model. Writes RUN/predict_<split|folder>_labels.npy, _probs.npy unless
--n_samples (or, where not given, the run's) is 0, for image files .csv (absolute path, label and class name),
and .json (which folder, or which images of the split). The labels of another folder, or of another set of
the split's images (other dataset flags), are not written over: move predict_<split|folder>.* away first.
"""
import utils.runs.startup  # noqa: F401  first, before torch loads: a Ctrl-C meanwhile ends in one line

import importlib
import os

from utils.errors import SetupError
from utils.predict import predict
from utils.runs.cli import Parser, run_cli
from utils.runs.config import HelpFormatter
from utils.runs.folders import load_run

SCRIPTS = ('train_CIFAR.py', 'train_Food101N.py', 'train_Clothing1M.py', 'train_WebVision.py', 'train_ImageFolder.py',
           'demo_digits.py')


def parser():
    p = Parser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('run_dir', metavar='RUN_DIR', help='the trained run (its best.pt)')
    what = p.add_mutually_exclusive_group()
    what.add_argument('--split', choices=('train', 'val', 'test'), default='test', help='the split of its dataset to label')
    what.add_argument('--folder', metavar='DIR', help='label every image under DIR instead (writes a CSV too)')
    p.add_argument('--script', choices=SCRIPTS,
                   help="the script that made the run (default: the one the run records; runs made before scripts "
                        "were recorded need it)")
    return p


def run_script(run_dir, script):
    """The training script of a run, as a module: the one it records, or `script`."""
    recorded = load_run(run_dir, 'best.pt')['config'].get('script')
    name = script or recorded
    if not name:
        raise SetupError(f'{run_dir} does not record the script that made it (a run made before runs recorded it): '
                         f'name it with --script ({", ".join(SCRIPTS)})')
    if name not in SCRIPTS:
        raise SetupError(f'{run_dir} was made by {name!r}, which predict.py does not know: it applies runs of '
                         f'{", ".join(SCRIPTS)}')
    return importlib.import_module(os.path.splitext(name)[0])


def main(argv=None):
    """Its own flags (the run, what to label); the rest are the run's script's flags."""
    args, script_argv = parser().parse_known_args(argv)
    script = run_script(args.run_dir, args.script)
    return predict(script.config(script_argv), script.load_splits, args.run_dir, args.split, args.folder)


if __name__ == '__main__':
    run_cli(main)
