"""Reproductions of the paper's tables.

python -m semicnn_jax.tables params    # Table 2: parameter counts, reproduced vs the paper
"""

from __future__ import annotations

from typing import Sequence

import jax
from absl import app

from semicnn_jax import convert, models, paper


def pretrained_count(name: str, params) -> int:
    """Values the ImageNet converter fills in model ``name``."""
    mask = convert.pretrained_mask(name, params)
    return sum(models.num_params(p) for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)


def table2_rows(families=paper.FAMILIES):
    """Per family: the reproduced (2D, 3D, semi pre-trained, semi total) counts."""
    for family in families:
        names = paper.model_names(family)
        params = [models.abstract_variables(models.create(name))["params"] for name in names]
        counts = [models.num_params(p) for p in params]
        yield family, (counts[0], counts[1], pretrained_count(names[2], params[2]), counts[2])


def format_table2(rows) -> str:
    columns = ("2D", "3D", "semi pre-trained", "semi total")
    lines = [
        "Table 2 - parameters at 16x224x224, 101 classes: reproduced (M) / paper (M) / exact match",
        "",
        "| model | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    all_match = True
    for family, counts in rows:
        cells = []
        for count, printed, exact in zip(counts, paper.TABLE2[family], paper.TABLE2_EXACT[family]):
            ok = round(count / 1e6, 1) == printed and count == exact
            all_match &= ok
            cells.append(f"{count / 1e6:.3f} / {printed:.1f} / {'yes' if ok else 'NO'} ({count:,})")
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("all reproduced" if all_match else "MISMATCH: see rows marked NO")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """``params``: Table 2 reproduced (exit 0 when every count matches)."""
    if list(argv[1:]) != ["params"]:
        raise app.UsageError("usage: python -m semicnn_jax.tables params")
    table = format_table2(table2_rows())
    print(table)
    return 0 if table.endswith("all reproduced") else 1


if __name__ == "__main__":
    app.run(main)
