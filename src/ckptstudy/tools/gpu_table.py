"""The GPU check's result (`ckptstudy-gpu-check`, outputs/gpu_check.json) as text: the console table, the failed
checks, and the precision table in markdown (README "Precision and the GPU check"). Pure functions of the result."""

from __future__ import annotations


def failures(result: dict) -> list[str]:
    """'model dtype family' of every failed check."""
    return [
        f"{model} {dtype} {family}"
        for model, m in result["models"].items()
        for dtype, rows in m["runs"].items()
        for family, row in rows.items()
        if row.get("ok") is False
    ]


def _mb(n) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MB"


def _s(x) -> str:
    return "-" if x is None else f"{x:.2f} s"


def render(result: dict) -> str:
    """The table: one row per model, dtype and family (and the fused check per backend)."""
    head = f"{'model':<12} {'dtype':<9} {'check':<28} {'computed in':<11} {'max|diff|':>10} {'max rel':>9} "
    head += f"{'ok':<4} {'time':>8} {'(plan)':>9} {'peak mem':>9} {'(plan)':>9}"
    lines = [
        f"device: {result['environment']['device']} ({result['environment']['name']}); "
        f"predictions: {result['gpu_class_note']}; lse: {result['lse']}",
        head,
        "-" * len(head),
    ]
    for model, m in result["models"].items():
        for dtype, rows in m["runs"].items():
            for family, row in rows.items():
                if family == "fused vs eager":
                    for backend, b in row["backends"].items():
                        ok = "n/a" if "unavailable" in b else ("yes" if b["ok"] else "NO")
                        diff = "-" if "unavailable" in b else f"{b['max_abs']:.2e}"
                        lines.append(
                            f"{model:<12} {dtype:<9} {'fused vs eager: ' + backend:<28} {dtype:<11} "
                            f"{diff:>10} {'':>9} {ok:<4}"
                        )
                    continue
                pred = row.get("predicted") or {}
                ok = {True: "yes", False: "NO", None: ""}[row.get("ok")]
                diff = f"{row['max_abs']:.2e}" if "max_abs" in row else "-"
                if "agreement" in row:  # the generation: share of tokens equal to the reference's (not a check)
                    diff = f"agree {row['agreement']:.2f}"
                rel = f"{row['max_rel']:.2e}" if "max_rel" in row else "-"
                lines.append(
                    f"{model:<12} {dtype:<9} {family[:28]:<28} {row['dtype']:<11} {diff:>10} {rel:>9} {ok:<4} "
                    f"{_s(row['seconds']):>8} {_s(pred.get('seconds')):>9} {_mb(row['peak_bytes']):>9} "
                    f"{_mb(pred.get('peak_bytes')):>9}"
                )
    failed = failures(result)
    lines.append("FAILED: " + "; ".join(failed) if failed else "every check passed")
    for model, m in result["models"].items():
        for dtype, rows in m["runs"].items():
            for family, row in rows.items():
                for key, values in (row.get("failed") or {}).items():
                    lines.append(f"  {model} {dtype} {family}: {key} = {values}")
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    """The precision table (README "Precision"): per model, family and dtype, max |diff| / max relative diff against
    the CPU float32 reference, the dtype the family computed in, and whether it is within the family's tolerance."""
    lines = ["| model | family | " + " | ".join(result["dtypes"]) + " |", "|---|---|" + "---|" * len(result["dtypes"])]
    for model, m in result["models"].items():
        for family in next(iter(m["runs"].values())):
            cells = []
            for dtype in result["dtypes"]:
                row = m["runs"][dtype][family]
                if "backends" in row:
                    measured = [b for b in row["backends"].values() if "max_abs" in b]
                    worst = max(b["max_abs"] for b in measured) if measured else float("nan")
                    cells.append(f"{worst:.1e} per query ({len(measured)} backends) {'yes' if row['ok'] else '**NO**'}")
                elif "agreement" in row:
                    cells.append(f"tokens agree {row['agreement']:.2f}")
                elif "max_abs" in row:
                    within = "yes" if row["ok"] else "**NO**"
                    cells.append(f"{row['max_abs']:.1e} / {row['max_rel']:.1e} ({row['dtype']}) {within}")
                elif row.get("dtype") == "float32" and dtype == "float32":
                    cells.append("reference")
                else:
                    cells.append(f"failed: {row.get('error')}")
            lines.append(f"| {model} | {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
