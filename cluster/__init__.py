"""Everything around the model: scenarios, the two runtimes, results, experiments and the CLI."""
