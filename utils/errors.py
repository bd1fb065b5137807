"""Every error the package raises on purpose, in one place.

A refusal the package knows (utils/runs/cli.KNOWN) prints one line, `error: ...`, names the problem and
the fix, and exits with status 2; --debug adds the traceback. SetupError and its kinds are bad input or
environment found before (or instead of) work; the others name what went wrong with a file, a run or a
computation.
"""


REFUSAL_EXIT = 2  # the exit status of a refusal (utils/runs/cli.run_cli)
# what a stop by Ctrl-C says (utils/runs/startup.py during the imports, run_cli once the command runs)
INTERRUPTED = 'interrupted (SIGINT)'


def first_few(names, shown=3):
    """The first `shown` names, and how many more: how a refusal lists what it found."""
    return ', '.join(names[:shown]) + (f' and {len(names) - shown:,} more' if len(names) > shown else '')


class SetupError(RuntimeError):
    """Bad input or environment: the message names the problem and the fix."""


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped a run after it wrote its checkpoint; the message says how to resume."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGTERM or SIGINT stopped a run mid-step: the last checkpoint written is what is kept."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


class ResumeRefused(SetupError):
    """A checkpoint this invocation cannot continue: not there, of another format, or its flags or
    inputs differ from this command's."""


class RefusedByOneRank(SetupError):
    """A refusal one rank of several makes alone (what it reads differs from what rank 0 read): that rank says
    it, where the others' refusals are said by rank 0."""


class PublishedInputError(SetupError):
    """A published input that could not be fetched or is not the published file."""


class EncoderError(RuntimeError):
    """An f_p or backbone encoder that cannot be built: weights missing, unreadable or of another
    architecture."""


class FeatureFileError(EncoderError):
    """A precomputed features file (--fp_encoder features --fp_checkpoint FILE) that does not fit the dataset or cannot be read."""


class DatasetMissing(FileNotFoundError):
    """A dataset folder or file that is absent or incomplete: the message names it and where to get it."""


class NoiseError(ValueError):
    """A noise name or noisy-label file that cannot be used (unknown name, wrong length, dtype or range)."""


class UnsafeFile(RuntimeError):
    """A file that would run code (or build arbitrary objects) when loaded: refused, never opened."""


class CorruptFile(RuntimeError):
    """A file that cannot be parsed (truncated, damaged, another format)."""


class CannotWrite(RuntimeError):
    """A write that failed for lack of space or permission; the message names the file and folder."""

    def __init__(self, code, message):
        super().__init__(message)
        self.errno = code


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite: the message names the epoch and step."""


def quoted_error(exc, limit=300):
    """An exception's message on one line (load_state_dict's says what failed on its second), cut to `limit`
    characters: what a refusal quotes of the error behind it."""
    text = ' '.join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + '...'
