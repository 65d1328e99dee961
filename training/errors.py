"""The error for training arguments that cannot run together (bad input, reported in one line)."""


class TrainingSetupError(ValueError):
    """A combination of training arguments this code cannot run (the message says what to change)."""
