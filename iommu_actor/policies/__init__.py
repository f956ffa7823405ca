"""Built-in recovery policies; importing this package registers them."""

from . import fence_on_timeout, mainline, series  # noqa: F401
