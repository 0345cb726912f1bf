"""Errors of the models package.

ModelError
 +-- UnknownModel      no such name/version in the registry
 +-- InvalidModel      model.yaml unreadable or invalid, or a bundle we cannot use
 +-- ChecksumMismatch  weights file does not hash to the SHA-256 its spec records
"""


class ModelError(Exception):
    """Base of every error this package raises."""


class UnknownModel(ModelError):
    pass


class InvalidModel(ModelError):
    pass


class ChecksumMismatch(ModelError):
    pass
