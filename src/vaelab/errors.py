"""The one exception type for mistakes a user can make.

Anything raised as :class:`VaelabError` is the user's to fix (a bad path, a corrupt file, a wrong
shape, a bad config value); the command line prints its message on one line and exits with code 2.
Every other exception is a bug in vaelab and keeps its traceback.
"""


class VaelabError(Exception):
    """A mistake the user can fix; the message says what was wrong and what to do."""
