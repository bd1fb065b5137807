"""Run entry points as `python SCRIPT ARGS...` or `python -m MODULE ARGS...` would, several in one
process (torch is imported once), and print what each did as JSON: its exit status and its stderr.

    python tests/run_entry_points.py < cases.json     # [{"entry": "train_CIFAR.py", "argv": [...]}, ...]

An entry is a script path relative to the repository or "-m module". Each runs as __main__ (its
`if __name__ == '__main__'` block included, so a script that bypasses utils.runs.cli.run_cli is caught); an
exception that escapes is printed as the interpreter would, with exit status 1. tests/test_refusals.py
runs the worst inputs of every entry point through it.
"""
import contextlib
import io
import json
import os
import runpy
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_entry(entry, argv):
    err, code = io.StringIO(), 0
    sys.argv = [entry, *argv]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            if entry.startswith('-m '):
                runpy.run_module(entry[3:], run_name='__main__', alter_sys=True)
            else:
                runpy.run_path(os.path.join(ROOT, entry), run_name='__main__')
        except SystemExit as exc:
            if isinstance(exc.code, str):  # sys.exit('message'): printed, status 1
                print(exc.code, file=sys.stderr)
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:  # noqa: B036 -- as the interpreter would report it
            traceback.print_exc()
            code = 1
    return {'entry': entry, 'argv': argv, 'code': code, 'stderr': err.getvalue()}


if __name__ == '__main__':
    sys.path.insert(0, ROOT)
    results = [run_entry(case['entry'], case['argv']) for case in json.load(sys.stdin)]
    print(json.dumps(results))
