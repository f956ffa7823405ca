"""The two runtimes of the one model: ``sim`` (virtual time, one process) and ``ray`` (live actors)."""
