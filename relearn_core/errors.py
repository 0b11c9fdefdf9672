"""The one exception type relearn raises for bad input: its message is a single line naming the file and the problem."""


class RelearnError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


class InputError(RelearnError):
    """A file or folder given by the user cannot be used."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
