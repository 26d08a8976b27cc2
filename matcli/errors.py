"""The one exception type for expected failures.

Its message is printed on one line by the CLI, so it must say what is wrong and how to fix it.
"""

USAGE = 2  # bad usage or bad input
RUNTIME = 1  # the input was fine but the work failed (disk full, interrupted, ...)


class MatcliError(Exception):
    def __init__(self, message: str, exit_code: int = USAGE):
        super().__init__(message)
        self.exit_code = exit_code
