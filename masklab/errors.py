"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(ValueError):
    """Bad input: a config value, a missing file, an unknown name. The message says what and how to fix it."""


class DataError(UserError):
    """A dataset is missing or corrupt; the message names the path searched and what was expected."""


class StoreError(UserError):
    """A run directory is unusable: wrong config, truncated or corrupt file, locked by another writer."""
