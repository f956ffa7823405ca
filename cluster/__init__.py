"""Scenarios, runtimes (sim and ray), the safety oracle, summaries and the CLI."""
