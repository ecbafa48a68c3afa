"""The errors a run stops with, and the exit code of each way of stopping (EXIT_CODES, printed by
`fastssl train --help` and tabled in the README). Imported by the checkpoint writer, the run lock, the
fault handling and the CLI; imports nothing of fastssl."""
from __future__ import annotations

EXIT_USAGE, EXIT_DIVERGED = 2, 3
EXIT_CODES = """\
  0    finished
  1    an unexpected error (a bug: Python's traceback)
  2    a bad option, input or output path (one line naming the fix); nothing was trained or overwritten
  3    training diverged (non-finite loss or weights); no non-finite checkpoint was written
  143  stopped by SIGTERM, 130 by SIGINT (Ctrl-C): the current step finished, a checkpoint was written;
       continue with --train.resume=DIR (or =auto). 128+signal, as a shell reports a killed process, so a
       job script requeues on 143 whether the signal came before the handler was installed or after.
"""


class RunError(Exception):
    """A run refused or stopped; `fastssl train` prints the message as one line and exits with `code`."""
    code = EXIT_USAGE
