"""Bone-age assessment from hand radiographs: preprocessing, models, evaluation, explanation."""

__version__ = "0.1.0"
