"""``python -m ats_stress.cluster.cli``: the same as the ``ats-stress`` command."""

from .app import main

main()
