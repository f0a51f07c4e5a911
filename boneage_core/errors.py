"""The project's exception hierarchy: every refusal is a BoneAgeError (and a ValueError or TypeError)."""

from __future__ import annotations


class BoneAgeError(Exception):
    """Base class of every error this project raises on purpose."""


class InputError(BoneAgeError, ValueError):
    """Bad user input: an image, an array, a table or an argument value."""


class InputTypeError(BoneAgeError, TypeError):
    """An argument of the wrong type (e.g. None or an int where an image source is expected)."""


class ArtifactError(BoneAgeError, ValueError):
    """An artifacts folder that is missing, corrupt, or whose files do not belong together (stale)."""


class MissingArtifactError(ArtifactError, FileNotFoundError):
    """An artifacts folder without the file (e.g. a trained model) that the operation needs."""
