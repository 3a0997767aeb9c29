"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class MsdnError(Exception):
    """A problem the user can fix (bad path, bad image, missing weights); never a bug."""


def first_line(exc: BaseException) -> str:
    """An exception in one line for a message: its first line of text, else its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
