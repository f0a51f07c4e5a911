"""The project's error hierarchy: every refusal a user can cause is a BoneAgeError with a readable message."""

from __future__ import annotations


class BoneAgeError(Exception):
    """Base of every error this package raises on purpose."""


class InputError(BoneAgeError, ValueError):
    """Bad user input: an image, an array, a label file or an argument value that cannot be used."""


class LabelError(InputError):
    """A label file or image folder does not match what is expected."""


class ImageLoadError(InputError):
    """An image could not be read or is not a usable radiograph."""


class ArtifactError(BoneAgeError, ValueError):
    """An artifacts folder is missing, corrupt, stale or cannot be written."""


class InputTypeError(BoneAgeError, TypeError):
    """An argument of the wrong type, e.g. None, an int or a text-mode file given as an image source."""


class MissingArtifactError(ArtifactError, FileNotFoundError):
    """An artifacts folder without the file (e.g. a trained model) that the operation needs."""


class ResumeError(ArtifactError):
    """A run cannot be resumed: no resume state, or settings that would change the run's plan."""
