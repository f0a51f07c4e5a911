"""errors: every exception class the package and the app define is a BoneAgeError (one hierarchy to catch)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import boneage_core
from boneage_core.errors import BoneAgeError


def _defined_exceptions(package) -> list[type]:
    found = []
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        module = importlib.import_module(info.name)
        found += [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                  if issubclass(cls, Exception) and cls.__module__ == module.__name__]
    return found


def test_every_error_class_of_the_package_is_a_bone_age_error():
    classes = _defined_exceptions(boneage_core)
    assert len(classes) >= 10  # errors.py's own and those beside their code (SexError, NotARadiographError, ...)
    assert [cls.__qualname__ for cls in classes if not issubclass(cls, BoneAgeError)] == []
