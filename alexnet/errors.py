"""The one exception type for user mistakes: the CLI prints it as a single line, never a traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad path, option, file). The message names it and the fix."""
