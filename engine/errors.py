"""The one exception type for user mistakes.

The command line prints a UserError as a single line (`ddpmrt: error: ...`) and exits
non-zero without a traceback; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix."""
