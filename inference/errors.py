"""Errors of the inference package.

InferenceError
 +-- UnreadableSeries   a selected series' pixel data cannot be decoded into a volume
"""


class InferenceError(Exception):
    """Base of every error this package raises."""


class UnreadableSeries(InferenceError):
    pass
