"""The error for training arguments that cannot run together (bad input, reported in one line)."""

from common.errors import InputError


class TrainingSetupError(InputError):
    """A combination of training arguments this code cannot run (the message says what to change)."""
