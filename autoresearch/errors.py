"""The one error type for problems a user can fix; the CLI turns it into one line and exit 1."""


class UserError(Exception):
    """A problem the person can fix (a bad flag, a broken recipe, a missing key)."""
