"""``python -m tests.helpers.kill_after_commits N ARGS...``: run ``preprocess_entry.py ARGS``, kill -9 itself.

The process sends itself SIGKILL right after the commit that brings the records done to ``N`` or more, so a
resume test interrupts the tool at an exact, known point (a timing poll from outside lands anywhere).
"""

import os
import signal
import sys

import preprocess_entry
from preprocess import Preprocessor


def main(argv: list[str]) -> int:
    kill_after, tool_args = int(argv[0]), argv[1:]
    run = Preprocessor.run

    def run_until_killed(self: Preprocessor, on_commit=None):
        def kill_at_the_mark(consumed: int) -> None:
            if consumed >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        return run(self, kill_at_the_mark)

    Preprocessor.run = run_until_killed
    return preprocess_entry.main(tool_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
