"""The one user-facing error type. The CLI turns it into a one-line message and exit code 2."""


class MMError(Exception):
    """A problem with the user's input (config, path, data, arguments), explained in one line.

    Raise it with a message that names the file or field at fault and, where possible, the fix.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
        self.message = " ".join(str(message).split())


# OSErrors that the user's environment causes, not a bug: each becomes one line and exit 2 at the CLI edge, with a fix.
_ENVIRONMENT_FIXES = {
    "ENOSPC": "free some space and run again (files finished before are intact: every write is atomic)",
    "EDQUOT": "free some space and run again (files finished before are intact: every write is atomic)",
    "EFBIG": "the file system refuses a file this large; write to another one",
    "EROFS": "the file system is read-only; write to a writable location",
    "EACCES": "no permission; write to a location you own",
    "EPERM": "not permitted; write to a location you own",
    "EISDIR": "is a directory; name a file",
    "ENOTDIR": "a part of the path is a file, not a directory; choose another path",
    "ENAMETOOLONG": "the name is too long for the file system; choose a shorter path",
    "ELOOP": "too many symbolic links; choose another path",
    "EEXIST": "already exists and is not what mmbench expected there; choose another path",
    "EMFILE": "too many open files; raise the limit (ulimit -n)",
}


def environment_error(error: BaseException) -> MMError | None:
    """The one-line MMError for an error the environment caused (a full disk, a read-only file system, no
    permission, a path that is a directory...), naming the path and the fix; None for anything else (a bug).

    An OSError is read by its errno; a library's own error wrapping one (safetensors, tokenizers: "... (os error
    28)") by the code in its message.
    """
    import errno
    import os
    import re

    code, where = getattr(error, "errno", None), getattr(error, "filename", None)
    if not isinstance(error, OSError):
        found = re.search(r"\(os error (\d+)\)", str(error))
        code = int(found.group(1)) if found else None
    name = errno.errorcode.get(code if isinstance(code, int) else -1)
    if name not in _ENVIRONMENT_FIXES:
        return None
    return MMError(f"{f'{where}: ' if where is not None else ''}{os.strerror(code)}; {_ENVIRONMENT_FIXES[name]}")
