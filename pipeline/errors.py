class InputError(Exception):
    """A bad input or output item: the message is one line naming the file and the reason."""
