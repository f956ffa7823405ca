"""``ats-stress policies``: the recovery policies, their parameters and where each came from; plug-in loading."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ats_stress.iommu_actor.policy import get_policy, policy_names

from .app import FORMAT_HELP, _fail_input, app, out_console, use_format

POLICY_FILE_HELP = "a Python file defining Policy subclasses to load (repeatable; see README, \"Plug-in policies\")"


def _plugins(files: list[Path]) -> tuple:
    """Entry-point plug-ins and each --policy-file registered; the sources to ship to workers. Exit 2
    with one paragraph on a bad plug-in."""
    from ats_stress.cluster.plugins import PluginError, load

    try:
        return load(files)
    except PluginError as exc:
        _fail_input(str(exc))


@app.command()
def policies(
    policy_file: list[Path] = typer.Option([], "--policy-file", help=POLICY_FILE_HELP),
    format_: str = typer.Option("rich", "--format", help=FORMAT_HELP),
) -> None:
    """List the recovery policies, their parameters and where each came from."""
    use_format(format_)
    from ats_stress.cluster.plugins import origin

    _plugins(policy_file)
    for name in policy_names():
        cls = get_policy(name)
        out_console.print(f"[bold]{name}[/bold] ({origin(name)}): {cls.summary}", highlight=False)
        params = Table.grid(padding=(0, 2))  # a long description wraps inside its own column
        params.add_column(no_wrap=True)
        params.add_column(no_wrap=True)
        params.add_column()
        for field, info in cls.Params.model_fields.items():
            if info.is_required():
                default = "required"
            else:
                default = f"default {info.get_default(call_default_factory=True)!r}"
            params.add_row(f"  {field}", default, info.description or "")
        out_console.print(params, highlight=False)
