"""Built-in recovery policies; importing this package registers them."""

from . import mainline, quarantine  # noqa: F401
