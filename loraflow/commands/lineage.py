"""``loraflow lineage MODEL@ALIAS|MODEL/VERSION [--row ID] [--ids SPLIT]``: what made a model version.

Without options: the run, config, base model hash, sources with digests, per-stage counts, splits and test set.
``--row ID``: where that record went (train / val / test / sampled out, or quarantined by which stage and rule).
``--ids train``: the ids of one split (the rows that trained the version). Ids and counts only, never text.
"""

from typing import Annotated

import typer


def command(
    model: Annotated[str, typer.Argument(help="MODEL@ALIAS (e.g. loraflow-demo@champion) or MODEL/VERSION.")],
    row: Annotated[str | None, typer.Option("--row", help="A record id: where did it go?")] = None,
    ids: Annotated[
        str | None, typer.Option("--ids", help="Print the ids in this split (train, val, test, sampled_out).")
    ] = None,
) -> None:
    """What made a registered model version, or where one record went."""
    from tasks import lineage
    from tasks.core import StageError

    try:
        if row:
            hits = lineage.where_is(model, row)
            if not hits:
                typer.echo(f"{row}: not among the records of the run that made {model}")
                raise typer.Exit(1)
            for h in hits:
                why = f" ({h['reason']})" if h["reason"] else ""
                where = f"quarantined by {h['stage']}: {h['reason']}" if h["outcome"] == "quarantined" else (
                    f"{h['outcome']}{why}")  # fmt: skip
                typer.echo(f"{row}: {where}")
        elif ids:
            table = lineage.rows(model)
            for rid in sorted(table.loc[(table["stage"] == "split") & (table["outcome"] == ids), "id"]):
                typer.echo(rid)
        else:
            typer.echo(lineage.format_description(lineage.describe(model)))
    except StageError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
