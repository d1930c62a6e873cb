"""paper.verify's markdown tables: one per model family for the random-weights check, one for a checkpoint on a
photo."""
from paper.models.family import paper_config, paper_params
from paper.references.equivalence import SECOND, table_of


def format_table(rows: list[dict], second: str = "hf", label: str = "HF") -> str:
    """A markdown table: one row per (model, dtype), against timm and the `second` reference (rows' keys
    "{second}_logits", "{second}_features", "{second}": transformers for a ViT, torchvision for a Swin)."""
    head = (f"| model | dtype | logits vs timm (abs / rel) | features vs timm | logits vs {label} | features vs {label} | "
            f"params ours | timm | {label} | paper |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['dtype']} | {r['skipped']} | | | | {r['ours']:,} | | | "
                         f"{paper_params(r['model'])} |")
            continue
        cells = [f"{a:.1e} / {b:.1e}" for a, b in (r["timm_logits"], r["timm_features"], r[f"{second}_logits"],
                                                    r[f"{second}_features"])]
        lines.append(f"| {r['model']} | {r['dtype']} | {' | '.join(cells)} | {r['ours']:,} | {r['timm']:,} | "
                     f"{r[second]:,} | {paper_params(r['model'])} |")
    return "\n".join(lines)


def format_tables(rows: list[dict]) -> str:
    """One table per model family (the hybrids in one of their own), in the order they first appear in `rows`, each
    against its second reference (references/equivalence.py SECOND)."""
    tables: dict[str, list[dict]] = {}
    for r in rows:
        tables.setdefault(table_of(paper_config(r["model"])), []).append(r)
    return "\n\n".join(format_table(table_rows, *SECOND[name]) for name, table_rows in tables.items())


def format_checkpoint_table(result: dict) -> str:
    head = "| implementation | dtype | max abs logit diff vs ours | max rel | top-5 agree | top-5 classes (probability) |"
    lines = [*result["header"], "", head, "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['implementation']} | {r['dtype']} | not run: {r['skipped']} | | | |")
        elif r["implementation"] == "ours":
            lines.append(f"| ours | {r['dtype']} | - | - | - | {r['top5']} |")
        else:
            order = ", same order" if r["top5_same_order"] else ""
            agree = f"{r['top5_agree']}/{r['top5_of']}{order}" if r["top5_of"] else "-"
            lines.append(f"| {r['implementation']} | {r['dtype']} | {r['max_abs']:.1e} | {r['max_rel']:.1e} | "
                         f"{agree} | {r['top5']} |")
    return "\n".join(lines)
