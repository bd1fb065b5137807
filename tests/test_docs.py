"""The pointers a newcomer follows: every Python file, doc, folder, `module.name` and `python -m` module that the
docs, the module docstrings and the comments name exists, so a pointer cannot outlive a move."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = r'(?:utils|benchmarks|tools|noisy_label|tests|model|docs)'
FILE = re.compile(rf'(?<![\w/.-])({TOP}(?:/\w+)*/[\w.-]+\.(?:py|md))\b')
FOLDER = re.compile(rf'(?<![\w/.-])({TOP}(?:/\w+)*/)(?![\w.])')
NAME = re.compile(rf'(?<![\w/.-])({TOP}(?:/\w+)+)\.([A-Za-z_]\w*)')
MODULE = re.compile(r'python3? -m ((?:benchmarks|tools|noisy_label)(?:\.\w+)+)')
EXTENSIONS = {'py', 'md', 'json', 'jsonl', 'pt', 'npy', 'npz', 'csv', 'txt', 'log', 'whl'}  # a file named, not a name
GONE = {'docs/BENCHMARKS.md'}  # named as where older figures are kept: in the git history
DOCS = ('README.md', 'docs', 'tools/README.md', 'model/README.md', 'noisy_label/README.md')


def texts():
    """(label, text) of every doc and every project Python file."""
    for doc in DOCS:
        path = os.path.join(ROOT, doc)
        paths = [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith('.md')] \
            if os.path.isdir(path) else [path]
        for p in paths:
            yield os.path.relpath(p, ROOT), open(p, encoding='utf-8').read()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith('.') and d not in ('__pycache__', 'runs', 'cache', 'data')]
        for name in sorted(files):
            p = os.path.join(folder, name)
            if name.endswith('.py') and p != os.path.abspath(__file__):  # this file names broken ones on purpose
                yield os.path.relpath(p, ROOT), open(p, encoding='utf-8').read()


def defined_names(path):
    """The names a module defines at its top level (functions, classes, assignments, imports)."""
    names = set()
    for node in ast.parse(open(path, encoding='utf-8').read()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split('.')[0] for a in node.names}
    return names


def broken_pointers(label, text):
    broken = []
    for path in FILE.findall(text):
        if not os.path.isfile(os.path.join(ROOT, path)) and path not in GONE:
            broken.append(path)
    for path in FOLDER.findall(text):
        if not os.path.isdir(os.path.join(ROOT, path)):
            broken.append(path)
    for module, name in NAME.findall(text):
        if name in EXTENSIONS:
            continue
        path = os.path.join(ROOT, module + '.py')
        if not os.path.isfile(path) or name not in defined_names(path):
            broken.append(f'{module}.{name}')
    for module in MODULE.findall(text):
        stem = os.path.join(ROOT, *module.split('.'))
        if not (os.path.isfile(stem + '.py') or os.path.isfile(os.path.join(stem, '__main__.py'))):
            broken.append(f'python -m {module}')
    return [f'{label}: {b}' for b in broken]


def test_the_pointer_patterns_find_what_they_should():
    text = ('see utils/runtime/graphs.py, utils/rundir.RunClaim, utils/runs/folders.RunClaim, utils/runs/, '
            'utils/nowhere/ and `python -m benchmarks.paper`, `python -m benchmarks.nothing`')
    assert broken_pointers('x', text) == ['x: utils/nowhere/', 'x: utils/rundir.RunClaim',
                                          'x: python -m benchmarks.nothing']


@pytest.mark.parametrize('label,text', list(texts()), ids=lambda v: v if len(v) < 80 else '')
def test_every_pointer_in_the_docs_and_the_code_exists(label, text):
    assert not broken_pointers(label, text)


def definition_lines(path, name):
    """The line numbers of `name` (a top-level definition, or `Class.method`) in a module."""
    node, found = ast.parse(open(path, encoding='utf-8').read()), None
    for part in name.split('.'):
        found = next((n for n in node.body if getattr(n, 'name', None) == part), None)
        assert found is not None, f'{name} is not defined in {os.path.relpath(path, ROOT)}'
        node = found
    first = min([found.lineno] + [d.lineno for d in getattr(found, 'decorator_list', [])])
    return set(range(first, found.end_lineno + 1))


def test_the_readmes_method_table_names_real_definitions_and_counts_their_lines():
    """README's "The method in about N lines": each `file` it names exists and each name after it is defined
    there; the definitions named (a file named alone: all of it) add up to N lines, within 15%."""
    readme = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
    n, section = re.search(r'^## The method in about (\d+) lines\n(.*?)^## ', readme, re.M | re.S).groups()
    lines = {}
    for row in re.findall(r'^\|[^|]*\|(.*)\|$', section, re.M)[2:]:  # the header and its rule first
        path = None
        for token in re.findall(r'`([^`]+)`', row):
            if token.endswith('.py'):
                path = os.path.join(ROOT, token)
                whole = set(range(1, len(open(path, encoding='utf-8').read().splitlines()) + 1))
                lines.setdefault(path, set()).update(whole if f'`{token}`:' not in row else ())
            else:
                lines[path] |= definition_lines(path, token)
    counted = sum(len(v) for v in lines.values())
    assert abs(counted - int(n)) <= 0.15 * int(n), (counted, n)


def test_the_readme_sections_other_docs_name_exist():
    readme = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
    sections = set(re.findall(r'^## (.+)$', readme, re.M))
    for label, text in texts():
        for name in re.findall(r'main README, "([^"]+)"', text):
            assert name in sections, f'{label} names the README section "{name}"'
