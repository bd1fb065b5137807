"""Download the published inputs (noise files, SimCLR encoders, Clothing1M's CC classifier and sample
selection) into the inputs folder and verify each by its git blob hash; files already there are
verified, not downloaded again.

    python -m noisy_label.fetch cifar10-1-0.35 SimCLR_128_cifar10
    python -m noisy_label.fetch --all --inputs_dir /path/to/folder   # then copy the folder offline
    python -m noisy_label.fetch cifar10-1-0.35 --from ~/LRA-diffusion  # offline, from a clone of the authors'

--from DIR (repeatable) takes the files from local copies instead of downloading them: clones or
checkouts of the repositories that published them (the authors' LRA-diffusion, PLC), or folders holding
them by name. Each file is verified by its git blob hash before it is kept; the files found are kept
and those found nowhere are named.

Prints one line per input: name, local path, git blob sha1. A refusal is one line, exit status 2.
"""
import utils.runs.startup  # noqa: F401  first, before torch loads: a Ctrl-C meanwhile ends in one line

import argparse
import os
import sys

from utils.errors import PublishedInputError
from utils.runs.cli import Parser, run_cli
from utils.storage.published import PUBLISHED, copy_in, fetch, inputs_dir, local_copy, lookup


def parser():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('names', nargs='*', metavar='NAME', help=f'published inputs: {", ".join(PUBLISHED)}')
    p.add_argument('--all', action='store_true', help='every published input')
    p.add_argument('--inputs_dir', default=None,
                   help='folder to keep them in (default $LRA_DIFFUSION_HOME, else $XDG_CACHE_HOME/lra_diffusion, '
                        'else ~/.cache/lra_diffusion)')
    p.add_argument('--from', dest='sources', action='append', metavar='DIR',
                   help='take the files from this folder instead of downloading them: a checkout of the repository '
                        'that published them, or a folder holding the files (repeat it for several)')
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
    kept = inputs_dir(args.inputs_dir)
    absent = [name for name, entry in entries if sources and local_copy(entry, sources) is None
              and not os.path.isfile(os.path.join(kept, entry.file_name))]
    for name, entry in entries:
        if name not in absent:
            path = copy_in(name, sources, args.inputs_dir, log=log) if sources else fetch(name, args.inputs_dir, log=log)
            print(f'{name}  {path}  git blob sha1 {entry.blob} verified')
    if absent:  # the others are copied: one clone of each repository can be given in turn
        raise PublishedInputError(f'not in {", ".join(sources)}: {", ".join(absent)}; give --from the checkouts of '
                                  f'{", ".join(sorted({PUBLISHED[name].repo for name in absent}))}, or fetch them online')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
