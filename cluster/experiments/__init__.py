"""Many runs of one scenario: ``compare`` (policies side by side) and ``sweep`` (a parameter grid)."""
