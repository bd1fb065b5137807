"""The command line a researcher sees first: --help of every script, and the README's flag table."""
import os
import re
import subprocess
import sys

import pytest

import demo_digits
import train_CIFAR
import train_Clothing1M
import train_Food101N
import train_ImageFolder
import train_WebVision
from utils.config import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILE_SCRIPTS = (train_Food101N, train_Clothing1M, train_WebVision, train_ImageFolder)


def parser_of(script):
    kind = 'files' if script in FILE_SCRIPTS else 'memory'
    return build_parser(script.__doc__, script.DEFAULTS, getattr(script, 'dataset_args', None), kind)


def flags(parser):
    return {o for a in parser._actions for o in a.option_strings if o.startswith('--') and not o.startswith('--no-')}


@pytest.mark.parametrize('script', [train_CIFAR, demo_digits, *FILE_SCRIPTS], ids=lambda m: m.__name__)
def test_every_flag_has_one_help_line_and_its_default_once(script):
    parser = parser_of(script)
    undocumented = [a.option_strings[0] for a in parser._actions if a.option_strings and not a.help]
    assert not undocumented
    text = parser.format_help()
    assert '(default: None)' not in text
    assert not re.search(r'\(default: [^)]*\)\s*\(default:', text)


def test_each_script_shows_only_the_flags_that_apply_to_it():
    cifar, food = flags(parser_of(train_CIFAR)), flags(parser_of(train_Food101N))
    assert not {'--image_size', '--fp_arch'} & cifar
    assert not {'--cifar_n_dir', '--download', '--data_root'} & food
    assert {'--food101n_root', '--image_size'} <= food


def test_the_readme_flag_table_matches_help():
    readme = open(os.path.join(ROOT, 'README.md')).read()
    section = readme[readme.index('### Flags'):readme.index('**Speed.**')]
    parser = parser_of(train_CIFAR)
    defaults = {o: a.default for a in parser._actions for o in a.option_strings}
    rows = re.findall(r'^\| `(--\w+)` \| .* \| `?([^|`]+?)`? \|$', section, re.M)
    assert len(rows) >= 12
    for flag, default in rows:
        assert str(defaults[flag]) == default, flag
    mentioned = set(re.findall(r'`(--\w+)', section))
    every_script = set().union(*(flags(parser_of(s)) for s in (train_CIFAR, *FILE_SCRIPTS)))
    assert mentioned <= every_script, mentioned - every_script      # nothing the scripts do not have
    assert flags(parser) - {'--help'} <= mentioned, flags(parser) - mentioned  # every CIFAR flag named


def test_help_runs_as_a_command():
    out = subprocess.run([sys.executable, 'train_CIFAR.py', '--help'], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert '--recipe' in out and 'authors' in out


def test_pretrain_simclr_help_shows_its_defaults():
    import pretrain_SimCLR
    parser = pretrain_SimCLR.parser()
    assert not [a.option_strings[0] for a in parser._actions if a.option_strings and not a.help]
    text = ' '.join(parser.format_help().split())
    assert '(default: 512)' in text and '(default: resnet50)' in text and '(default: None)' not in text
    assert not re.search(r'\(default: [^)]*\)\s*\(default:', text)
