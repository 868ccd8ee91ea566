"""The error family of patseg: everything a user can fix is a :class:`PatsegError`.

The command line catches ``PatsegError`` once (``patseg.cli.main``) and prints its message as one line with exit
code 2, never a traceback; library users can catch the same class. Each message names the file, key or value at
fault and, where one exists, the fix. Subclasses also derive from the built-in error a caller would expect
(``ValueError``, ``FileNotFoundError``), so code written against those keeps working.
"""

from __future__ import annotations


class PatsegError(Exception):
    """Base class of every error caused by the user's input, files or environment."""


class ConfigError(PatsegError, ValueError):
    """A configuration key is unknown or its value has the wrong type; the message names the key."""


class UsageError(PatsegError, ValueError):
    """Command-line arguments that do not fit together or are out of range."""


class MissingFileError(PatsegError, FileNotFoundError):
    """A file patseg needs (weights, a dataset folder, an image) does not exist; the message says which."""


class CheckpointError(PatsegError, ValueError):
    """A weights file or training checkpoint cannot be read or does not fit the model; names the file and keys."""


class DatasetError(PatsegError, FileNotFoundError):
    """A prepared dataset is missing, incomplete or malformed; the message names the folder and what is wrong."""


class ResultsFileError(PatsegError, ValueError):
    """A results file (``patseg eval --out``, ``patseg report``) is missing a key, malformed or inconsistent."""


class ImageReadError(PatsegError, ValueError):
    """An input image could not be read; the message names the file."""
