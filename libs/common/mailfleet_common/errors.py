"""The base exception of mailfleet's own errors."""


class MailfleetError(Exception):
    """Something mailfleet refuses to do, with a reason fit to show the caller."""
