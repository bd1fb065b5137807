"""The tree's shape: no module imports one that imports it back (at module level)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('utils', 'benchmarks', 'noisy_label', '.')


def project_modules():
    mods = {}
    for folder in PACKAGES:
        for name in os.listdir(os.path.join(ROOT, folder)):
            if name.endswith('.py'):
                mods[name[:-3] if folder == '.' else f'{folder}.{name[:-3]}'] = os.path.join(ROOT, folder, name)
    return mods


def module_level_imports(path, mods):
    deps = set()
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            deps |= {c for c in (node.module, *(f'{node.module}.{a.name}' for a in node.names)) if c in mods}
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name in mods}
    return deps


def cycles(graph):
    found, state, stack = [], {}, []

    def visit(n):
        state[n] = 'open'
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 'open':
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 'done'
    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == [['a', 'b', 'c', 'a']]


def test_no_import_cycle():
    mods = project_modules()
    graph = {name: module_level_imports(path, mods) - {name} for name, path in mods.items()}
    assert 'utils.engine' in graph and 'utils.evaluate' in graph['utils.engine']
    assert cycles(graph) == []
