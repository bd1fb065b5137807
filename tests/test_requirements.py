"""The install: constraints.txt pins a version of everything requirements.txt asks for, inside its range."""
import os
import subprocess
import sys

import pytest

requirements = pytest.importorskip('packaging.requirements')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, '.ci'))
import versions  # noqa: E402  (.ci/versions.py)


def test_every_requirement_has_a_tested_pin_inside_its_range():
    pinned = versions.pins()
    for name, line in versions.requirements().items():
        wanted = requirements.Requirement(line)
        assert name in pinned, f'{line}: no pin in constraints.txt'
        assert wanted.specifier.contains(pinned[name], prereleases=True), f'{line}: constraints.txt pins {pinned[name]}'


def test_the_version_report_names_every_requirement():
    out = subprocess.run([sys.executable, os.path.join(ROOT, '.ci', 'versions.py')], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith('python ') and 'installed packages differ from constraints.txt' in out[-1]
    listed = {versions.canonical(versions.NAME.match(line).group(1)) for line in out[1:-1]}
    assert listed == set(versions.requirements())
