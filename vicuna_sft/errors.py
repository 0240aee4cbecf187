"""Errors meant for the user as they are: the entry point prints them without a traceback."""


class UserError(Exception):
    """Bad input (config, data, model path): the message says what and where."""
