"""The errors users see: one line naming what is wrong, the key or file, and the fix.

Every package may import this module (it imports nothing of Meshtron's); the CLI prints
these as one line and exits with status 2, never a traceback.
"""


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters (a user may type them) shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class UserError(ValueError):
    """A problem the user can fix (bad input, missing file); the CLI prints it as one line, exit 2."""

    def __str__(self) -> str:
        return one_line(super().__str__())  # one line, whatever the user typed into it


class ConfigError(UserError):
    """A config problem a user can fix; its message is one line naming the key."""
