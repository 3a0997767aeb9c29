"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class MsdnError(Exception):
    """A problem the user can fix (bad path, bad image, missing weights); never a bug."""
