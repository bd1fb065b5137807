"""Download the published inputs (noise files, SimCLR encoders, Clothing1M's CC classifier and sample
selection) into the inputs folder and verify each by its git blob hash; files already there are
verified, not downloaded again.

    python -m noisy_label.fetch cifar10-1-0.35 SimCLR_128_cifar10
    python -m noisy_label.fetch --all --inputs_dir /path/to/folder   # then copy the folder offline
    python -m noisy_label.fetch cifar10-1-0.35 --from ~/LRA-diffusion  # offline, from a clone of the authors'

--from takes the files from local copies instead of downloading them: clones or checkouts of the
repositories that published them (the authors' LRA-diffusion, PLC), or folders holding them by name.
Either way each file is verified by its git blob hash before it is kept.

Prints one line per input: name, local path, git blob sha1. A refusal is one line, exit status 2.
"""
import argparse
import os
import sys

from utils.errors import PublishedInputError
from utils.runs.cli import Parser, run_cli
from utils.storage.published import PUBLISHED, copy_in, fetch, lookup


def parser():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('names', nargs='*', metavar='NAME', help=f'published inputs: {", ".join(PUBLISHED)}')
    p.add_argument('--all', action='store_true', help='every published input')
    p.add_argument('--inputs_dir', default=None,
                   help='folder to keep them in (default $LRA_DIFFUSION_HOME, else $XDG_CACHE_HOME/lra_diffusion, '
                        'else ~/.cache/lra_diffusion)')
    p.add_argument('--from', dest='sources', nargs='+', metavar='DIR',
                   help='take the files from these folders (checkouts of the repositories that published them, or '
                        'folders holding the files) instead of downloading them')
    return p


def log(message):
    print(message, file=sys.stderr)


def main(argv=None):
    args = parser().parse_args(argv)
    if args.all == bool(args.names):
        raise PublishedInputError('name the inputs to fetch, or pass --all (not both)')
    entries = [lookup(name) for name in (PUBLISHED if args.all else args.names)]  # refuse before fetching
    sources = [os.path.expanduser(source) for source in args.sources or []]
    missing = [source for source in sources if not os.path.isdir(source)]
    if missing:
        raise PublishedInputError(f'--from {missing[0]}: no such folder; give a checkout of the repository that '
                                  f'published the files, or a folder holding them')
    for name, entry in entries:
        path = copy_in(name, sources, args.inputs_dir, log=log) if sources else fetch(name, args.inputs_dir, log=log)
        print(f'{name}  {path}  git blob sha1 {entry.blob} verified')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
