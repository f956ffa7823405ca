"""pytest configuration: the suite runs against the installed package (`make test` installs it editable)."""
