"""`meshtron plan`: not yet available."""

from meshtron.configs.loader import UserError


def add_arguments(parser) -> None:
    """No options yet."""
    parser.add_argument("rest", nargs="*", help="arguments of the command")


def run(args) -> int:
    """Refuse clearly until the command exists."""
    raise UserError("meshtron plan is not yet available in this version")
