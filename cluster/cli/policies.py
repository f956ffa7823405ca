"""``ats-stress policies``: the recovery policies and their parameters."""

from __future__ import annotations

from ats_stress.iommu_actor.policy import get_policy, policy_names

from .app import app, out_console


@app.command()
def policies() -> None:
    """List the recovery policies and their parameters."""
    for name in policy_names():
        cls = get_policy(name)
        out_console.print(f"[bold]{name}[/bold]: {cls.summary}", highlight=False)
        for field, info in cls.Params.model_fields.items():
            desc = f" — {info.description}" if info.description else ""
            out_console.print(f"    {field} (default {info.default!r}){desc}", highlight=False)
