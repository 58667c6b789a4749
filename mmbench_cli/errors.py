"""The one user-facing error type. The CLI turns it into a one-line message and exit code 2."""


class MMError(Exception):
    """A problem with the user's input (config, path, data, arguments), explained in one line.

    Raise it with a message that names the file or field at fault and, where possible, the fix.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
        self.message = " ".join(str(message).split())
