"""The one exception type edgeopt raises for bad input; the CLI prints it as a single line."""


class EdgeoptError(Exception):
    """A problem with what the user gave edgeopt: says what was received and what was expected."""
