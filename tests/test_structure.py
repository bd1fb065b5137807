"""The tree's shape: no module imports one that imports it back, whether the import sits at module level
or inside a function; the method stays at the first level of utils/ (beside model_diffusion.py), and the
plumbing it stands on (data readers and noise, f_p encoders and their caches, the process's devices,
safe storage) never reaches up into it or into the run folders and command line above it."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('utils', 'benchmarks', 'noisy_label', 'tools')
BELOW_THE_METHOD = ('utils.data', 'utils.encoders', 'utils.runtime', 'utils.storage')
ABOVE_THE_METHOD = ('utils.runs', 'utils.pretraining')  # run folders, resume, outputs, the command line; SimCLR runs


def project_modules():
    """{dotted name: path} of every module of the project (the scripts at the top, the packages)."""
    mods = {name[:-3]: os.path.join(ROOT, name) for name in os.listdir(ROOT) if name.endswith('.py')}
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = [d for d in dirs if d != '__pycache__']
            for name in files:
                if name.endswith('.py'):
                    dotted = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, '.')
                    mods[dotted.removesuffix('.__init__')] = os.path.join(folder, name)
    return mods


def imports(path, mods, inside_functions=True):
    """The project modules a file imports, at module level and (by default) inside functions."""
    tree = ast.parse(open(path).read())
    nodes = ast.walk(tree) if inside_functions else tree.body
    deps = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
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


def graph():
    mods = project_modules()
    return {name: imports(path, mods) - {name} for name, path in mods.items()}


def test_cycle_finder_finds_a_cycle():
    assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == [['a', 'b', 'c', 'a']]


def test_imports_inside_functions_count(tmp_path):
    path = tmp_path / 'm.py'
    path.write_text('import os\n\ndef f():\n    from utils.trainer import Trainer\n    return Trainer\n')
    mods = {'utils.trainer': '', 'os': ''}
    assert imports(str(path), mods) == {'utils.trainer', 'os'} and imports(str(path), mods, False) == {'os'}


def test_no_import_cycle():
    g = graph()
    assert 'utils.trainer' in g['utils.engine'] and 'utils.evaluate' in g['utils.trainer']
    assert cycles(g) == []


def test_the_plumbing_does_not_reach_up_into_the_method():
    """utils/data, utils/encoders, utils/runtime/devices and utils/storage serve the method's modules at the
    first level of utils/ (and model_diffusion.py), never the other way round, and know nothing of run
    folders or flags (utils/runs): a reader or an encoder that imported utils.trainer, say, could not be
    used without the training loop."""
    g = graph()
    packages = set(BELOW_THE_METHOD + ABOVE_THE_METHOD)
    method = {m for m in g if m.count('.') == 1 and m.startswith('utils.') and m not in packages}
    method = (method | {'model_diffusion'}) - {'utils.errors', 'utils.networks'}  # leaves everyone reads
    above = {m for m in g if m.startswith(ABOVE_THE_METHOD)}
    reaching_up = {m: sorted(g[m] & (method | above)) for m in g if m.startswith(BELOW_THE_METHOD)}
    assert {m: up for m, up in reaching_up.items() if up} == {}
    assert 'utils.trainer' in method and 'utils.data.cifar' in g and 'utils.runs.config' in above


LEAVES = BELOW_THE_METHOD + ('utils.retrieval', 'utils.schedule', 'utils.evaluate', 'utils.averaging', 'utils.networks',
                             'model_diffusion')


def test_leaf_modules_take_explicit_arguments_not_the_run_configuration():
    """The readers, encoders, storage, the process's helpers and the method's pure parts are called with
    the values they need: a function there that took the whole configuration (`cfg`) could read any flag,
    and neither its tests nor its callers could tell which."""
    mods = project_modules()
    taking = []
    for name, path in mods.items():
        if name.startswith(LEAVES):
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, (ast.FunctionDef, ast.Lambda)) and 'cfg' in [a.arg for a in node.args.args]:
                    taking.append(f'{name}.{getattr(node, "name", "<lambda>")}')
    assert taking == []
