"""The errors users see: one line naming what is wrong, the key or file, and the fix.

Every package may import this module (it imports nothing of Meshtron's); the CLI prints
these as one line and exits with status 2, never a traceback.
"""


class UserError(ValueError):
    """A problem the user can fix (bad input, missing file); the CLI prints it as one line, exit 2."""


class ConfigError(UserError):
    """A config problem a user can fix; its message is one line naming the key."""
