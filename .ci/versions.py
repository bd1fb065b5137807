"""What an install holds, beside what requirements.txt asks and constraints.txt pins.

    python .ci/versions.py            # the versions CI installed, and where they differ from the tested ones
    python .ci/versions.py --freeze   # a new constraints.txt from this install (after the suite passed)

CI prints the first after installing, so a red run says which versions it ran with.
"""
import argparse
import platform
import re
import sys
import textwrap
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r'^\s*([A-Za-z0-9][A-Za-z0-9._-]*)')
PIN = re.compile(r'^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)')
NOT_PINNED = {'pip'}  # the installer itself


def canonical(name):
    return re.sub(r'[-_.]+', '-', name).lower()


def lines(path):
    return [line.split('#', 1)[0].strip() for line in path.read_text().splitlines()]


def requirements(path=ROOT / 'requirements.txt'):
    """{canonical name: the line} of every requirement."""
    return {canonical(m.group(1)): line for line in lines(path) if (m := NAME.match(line))}


def pins(path=ROOT / 'constraints.txt'):
    """{canonical name: pinned version} of a constraints file."""
    return {canonical(m.group(1)): m.group(2) for line in lines(path) if (m := PIN.match(line))}


def installed():
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata['Name']
        if name and canonical(name) not in NOT_PINNED:
            found[canonical(name)] = (name, dist.version)
    return found


def report():
    have, pinned = installed(), pins()
    print(f'python {platform.python_version()} on {platform.platform()} ({platform.machine()})')
    for name, line in requirements().items():
        version = have.get(name, (name, 'not installed'))[1]
        tested = pinned.get(name)
        note = '' if version == tested else f'   (tested: {tested or "not pinned"})'
        print(f'  {line:<32} {version}{note}')
    differ = sorted(f'{have[n][0]} {have[n][1]} (tested {pinned.get(n, "none")})'
                    for n in have if have[n][1] != pinned.get(n))
    print(f'{len(differ)} of {len(have)} installed packages differ from constraints.txt' +
          (': ' + ', '.join(differ) if differ else ''))


def freeze():
    said = (f'The exact versions of one tested install: `pip install -r requirements.txt` on {time.strftime("%Y-%m-%d")}, '
            f'Python {platform.python_version()}, {platform.machine()} {platform.system()}, where the whole test suite passed. '
            f'To install exactly what was tested: `pip install -r requirements.txt -c constraints.txt`. requirements.txt '
            f'keeps open ranges, so a plain install takes newer releases. The nvidia-* and triton pins come with torch\'s '
            f'CUDA build on Linux; elsewhere pip does not install them and ignores their lines. Refreshed by '
            f'`python .ci/versions.py --freeze > constraints.txt` after a passing run.')
    print('\n'.join('# ' + line for line in textwrap.wrap(said, 98)))
    for name, version in sorted(installed().values(), key=lambda nv: canonical(nv[0])):
        print(f'{name}=={version}')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--freeze', action='store_true', help='print a constraints file of this install')
    freeze() if p.parse_args().freeze else report()
    sys.exit(0)
