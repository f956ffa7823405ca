"""What a run leaves behind: the summary, terminal text, report.md and plots, metrics, Prometheus."""
