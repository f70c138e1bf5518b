"""Errors a user can cause. The CLI prints them as one line and exits with ``exit_code``.

Anything else is an internal error and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or setup (bad file, missing weights, no API key...)."""

    exit_code = 2


class MediaError(UserError):
    """The media cannot be used: missing, corrupt, unsupported, no or empty audio."""


class ModelNotFoundError(UserError):
    """A model's weights cannot be found locally and cannot be fetched."""


class ConfigError(UserError):
    """A setting is invalid or a config file cannot be read."""
