"""The ``ats-stress`` command line (Typer): ``app.py`` holds the app and what commands share; each
other module registers its commands on it when imported."""

from . import experiments, policies, run  # noqa: F401  (each registers its commands on app)
from .app import (
    EXIT_EXPECT,
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    app,
    main,
)

__all__ = ["app", "main", "EXIT_OK", "EXIT_EXPECT", "EXIT_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED"]
