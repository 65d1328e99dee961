"""The one base class of errors caused by what a user supplied, as opposed to errors in the code.

Front ends (the generation runner, the command-line tools) catch `InputError` and print its message as
one line; anything else is a bug and keeps its traceback. Subclasses name the kind of input: a query, an
image, a file of queries or captions, a checkpoint, a device name.
"""


class InputError(ValueError):
    """Bad input from the user: the message names the file, line, key or argument and what is wrong.

    It is a ValueError so that callers written against the original's plain ValueErrors still catch it.
    """


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder the user named does not exist (also a FileNotFoundError, for older callers)."""
