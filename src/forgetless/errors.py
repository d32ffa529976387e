"""Errors meant for the person running forgetless: the CLI prints their message, not a traceback."""


class ForgetlessError(Exception):
    """A problem with the user's input (config, files, names) described in plain words."""
