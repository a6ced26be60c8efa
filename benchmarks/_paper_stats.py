"""Statistics and markdown tables of the paper benchmark (``benchmarks/paper.py``).

Input: a long frame with one row per scheme, dataset (joint), case (subject), structure (bone)
and the metrics of :data:`jointseg.evaluation.metrics.METRICS`. Subjects are paired by
``(dataset, case)``: every scheme is tested on the same subjects (the same folds).

- :func:`reference_tests`: the reference scheme (``full``) against each other scheme per bone,
  two-sided Wilcoxon signed-rank (:func:`jointseg.evaluation.statistics.paired_test`), Holm over
  every test of the table (:func:`jointseg.evaluation.statistics.holm`), effect sizes: the
  median paired difference and the matched-pairs rank-biserial correlation.
- :func:`ranking_tests`: each step of the paper's ranking (individual -> transfer / shared ->
  mtmd -> mtmd+con -> full) per bone, the better-claimed scheme minus the other, Holm over all
  steps and bones, and whether the step holds.
"""

from __future__ import annotations

import math

import pandas as pd

from jointseg.evaluation.metrics import HIGHER_IS_BETTER, METRIC_LABELS, METRICS
from jointseg.evaluation.statistics import describe, holm, paired_test

REFERENCE = "full"
#: The paper's ranking as steps (claimed better, claimed worse).
RANKING_STEPS: tuple[tuple[str, str], ...] = (
    ("transfer", "individual"),
    ("shared", "individual"),
    ("mtmd", "transfer"),
    ("mtmd", "shared"),
    ("mtmd+con", "mtmd"),
    ("full", "mtmd+con"),
)
ALPHA = 0.05


def bones(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, structure) pairs in their order of appearance."""
    return list(dict.fromkeys(zip(frame["dataset"], frame["structure"], strict=True)))


def paired_values(
    frame: pd.DataFrame, a: str, b: str, dataset: str, structure: str, metric: str
) -> tuple[list[float], list[float]]:
    """The metric of schemes ``a`` and ``b`` on the subjects both were tested on, paired."""
    part = frame[(frame["dataset"] == dataset) & (frame["structure"] == structure)]
    wide = part.pivot_table(index="case", columns="scheme", values=metric, dropna=False)
    if a not in wide or b not in wide:
        return [], []
    return wide[a].tolist(), wide[b].tolist()


def paired_tests(frame: pd.DataFrame, pairs: list[tuple[str, str]], metric: str) -> pd.DataFrame:
    rows = []
    for better, worse in pairs:
        for dataset, structure in bones(frame):
            a, b = paired_values(frame, better, worse, dataset, structure, metric)
            if not a:
                continue
            test = paired_test(a, b)
            rows.append(
                {
                    "scheme": better,
                    "against": worse,
                    "dataset": dataset,
                    "structure": structure,
                    "metric": metric,
                    **test.as_dict(),
                }
            )
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"] = holm(table["p_value"].to_numpy(dtype=float))
    return table


def reference_tests(
    frame: pd.DataFrame, schemes: list[str], metric: str = "dice", reference: str = REFERENCE
) -> pd.DataFrame:
    """``reference`` against every other scheme of ``schemes`` per bone; Holm over the table."""
    others = [s for s in schemes if s != reference and s in set(frame["scheme"])]
    return paired_tests(frame, [(reference, s) for s in others], metric)


def verdict(median: float, p_holm: float, higher_is_better: bool = True) -> str:
    """'holds' (significant, in the claimed direction), 'reversed' or 'not shown'."""
    if p_holm is None or math.isnan(p_holm) or p_holm >= ALPHA or median == 0:
        return "not shown"
    return "holds" if (median > 0) == higher_is_better else "reversed"


def ranking_tests(frame: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Every step of the paper's ranking per bone; Holm over all steps and bones."""
    present = set(frame["scheme"])
    steps = [(a, b) for a, b in RANKING_STEPS if a in present and b in present]
    table = paired_tests(frame, steps, metric)
    if len(table):
        table["verdict"] = [
            verdict(m, p, HIGHER_IS_BETTER[metric])
            for m, p in zip(table["median_difference"], table["p_holm"], strict=True)
        ]
    return table


# -- markdown --------------------------------------------------------------------------------
def _fmt_p(p: float) -> str:
    return "–" if p is None or math.isnan(p) else f"{p:.2g}"


def _bone_name(dataset: str, structure: str) -> str:
    return f"{dataset} {structure}"


def metric_table(frame: pd.DataFrame, schemes: list[str], metric: str) -> str:
    """Paper-style table: schemes x bones, mean ± SD over subjects (missing counts noted)."""
    columns = bones(frame)
    digits = 3 if metric in ("dice", "sensitivity", "specificity", "ravd") else 2
    lines = [
        "| scheme | " + " | ".join(_bone_name(*c) for c in columns) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for scheme in schemes:
        part = frame[frame["scheme"] == scheme]
        if not len(part):
            continue
        cells = []
        for dataset, structure in columns:
            values = part[(part["dataset"] == dataset) & (part["structure"] == structure)][metric]
            stats = describe(values.to_numpy(dtype=float))
            if stats["mean"] is None:
                cells.append("–")
                continue
            text = f"{stats['mean']:.{digits}f}"
            if stats["sd"] is not None:
                text += f" ± {stats['sd']:.{digits}f}"
            if stats["missing"]:
                text += f" ({stats['missing']} missing)"
            cells.append(text)
        lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tests_table(tests: pd.DataFrame, row_key: str = "against") -> str:
    """One row per compared scheme, one cell per bone: median Δ, p (Holm p), rank-biserial r."""
    if not len(tests):
        return "(no paired tests: a scheme is missing)"
    columns = list(dict.fromkeys(zip(tests["dataset"], tests["structure"], strict=True)))
    lines = [
        "| | " + " | ".join(_bone_name(*c) for c in columns) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    keys = list(dict.fromkeys(zip(tests["scheme"], tests["against"], strict=True)))
    for scheme, against in keys:
        label = against if row_key == "against" else f"{scheme} vs {against}"
        cells = []
        for dataset, structure in columns:
            r = tests[
                (tests["scheme"] == scheme)
                & (tests["against"] == against)
                & (tests["dataset"] == dataset)
                & (tests["structure"] == structure)
            ]
            if not len(r) or pd.isna(r["p_value"].iloc[0]):
                cells.append("–")
                continue
            r = r.iloc[0]
            rb = "–" if pd.isna(r["rank_biserial"]) else f"{r['rank_biserial']:+.2f}"
            cell = (
                f"{r['median_difference']:+.3f}, p {_fmt_p(r['p_value'])} "
                f"({_fmt_p(r['p_holm'])}), r {rb}"
            )
            if "verdict" in r:
                cell += f", **{r['verdict']}**" if r["verdict"] != "not shown" else ", not shown"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metric_tables(frame: pd.DataFrame, schemes: list[str]) -> str:
    """Every metric's paper-style table, each under its own heading."""
    parts = []
    for metric in METRICS:
        if metric in frame and frame[metric].notna().any():
            parts.append(f"#### {METRIC_LABELS[metric]} (mean ± SD over subjects)\n")
            parts.append(metric_table(frame, schemes, metric) + "\n")
    return "\n".join(parts)


def scarce_table(frame: pd.DataFrame, schemes: list[str]) -> str:
    """Mean Dice per bone on the fixed held-out subjects, a row per (training subjects, scheme)."""
    columns = bones(frame)
    lines = [
        "| subjects per joint | scheme | " + " | ".join(_bone_name(*c) for c in columns) + " |",
        "|" + "---|" * (len(columns) + 2),
    ]
    for n in sorted(frame["subjects"].unique()):
        for scheme in schemes:
            part = frame[(frame["subjects"] == n) & (frame["scheme"] == scheme)]
            if not len(part):
                continue
            means = part.groupby(["dataset", "structure"], sort=False)["dice"].mean()
            cells = [f"{means.get((d, s), math.nan):.3f}" for d, s in columns]
            lines.append(f"| {n} | {scheme} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paired_over_bones(
    a: pd.DataFrame, scheme_a: str, b: pd.DataFrame, scheme_b: str, metric: str
) -> tuple[list[float], list[float]]:
    """``metric`` of ``scheme_a`` in ``a`` and of ``scheme_b`` in ``b``, paired by (dataset,
    case, structure): every subject and bone both were tested on."""
    keys = ["dataset", "case", "structure"]
    left = a[a["scheme"] == scheme_a][[*keys, metric]]
    right = b[b["scheme"] == scheme_b][[*keys, metric]]
    both = left.merge(right, on=keys, suffixes=("_a", "_b")).dropna()
    return both[f"{metric}_a"].tolist(), both[f"{metric}_b"].tolist()


def cap_comparison(
    short: pd.DataFrame,
    long: pd.DataFrame,
    schemes: list[str],
    labels: tuple[str, str],
    metric: str = "dice",
) -> pd.DataFrame:
    """Per scheme: the mean of ``metric`` over bones and subjects at each cap, its rank among
    the schemes (1 = best) and the paired change (long − short) over every (subject, bone):
    median, two-sided Wilcoxon p, rank-biserial r. The pooled test treats the bones of a
    subject as independent pairs: a summary, not the per-bone test of the cross-validation."""
    rows = []
    for scheme in schemes:
        before, after = _paired_over_bones(short, scheme, long, scheme, metric)
        if not before:
            continue
        test = paired_test(after, before)
        rows.append(
            {
                "scheme": scheme,
                labels[0]: sum(before) / len(before),
                labels[1]: sum(after) / len(after),
                "pairs": len(before),
                "median_difference": test.median_difference,
                "p_value": test.p_value,
                "rank_biserial": test.rank_biserial,
            }
        )
    table = pd.DataFrame(rows)
    if len(table):
        higher = HIGHER_IS_BETTER[metric]
        for label in labels:
            table[f"rank {label}"] = table[label].rank(ascending=not higher, method="min")
    return table


def cap_comparison_table(table: pd.DataFrame, labels: tuple[str, str]) -> str:
    """The markdown of :func:`cap_comparison`, with the rank correlation of the two orders."""
    from scipy.stats import kendalltau

    lines = [
        f"| scheme | mean Dice at {labels[0]} (rank) | at {labels[1]} (rank) | median Δ "
        "(long − short), p, r over subject × bone |",
        "|---|---|---|---|",
    ]
    for row in table.to_dict("records"):
        rb = "–" if pd.isna(row["rank_biserial"]) else f"{row['rank_biserial']:+.2f}"
        lines.append(
            f"| {row['scheme']} | {row[labels[0]]:.3f} ({row[f'rank {labels[0]}']:.0f}) | "
            f"{row[labels[1]]:.3f} ({row[f'rank {labels[1]}']:.0f}) | "
            f"{row['median_difference']:+.3f}, p {_fmt_p(row['p_value'])}, r {rb} "
            f"({row['pairs']} pairs) |"
        )
    if len(table) > 2:
        tau = kendalltau(table[f"rank {labels[0]}"], table[f"rank {labels[1]}"]).statistic
        lines.append(f"\nKendall's tau between the two orders: {tau:+.2f}")
    return "\n".join(lines)


def ranking_shift_table(short: pd.DataFrame, long: pd.DataFrame, labels: tuple[str, str]) -> str:
    """Each step of the paper's ranking: the mean paired Dice difference (claimed better −
    worse) over the subjects and bones both were tested on, at each cap."""

    def mean_step(frame: pd.DataFrame, better: str, worse: str) -> float | None:
        a, b = _paired_over_bones(frame, better, frame, worse, "dice")
        return sum(x - y for x, y in zip(a, b, strict=True)) / len(a) if a else None

    lines = [f"| step | at {labels[0]} | at {labels[1]} |", "|---|---|---|"]
    for better, worse in RANKING_STEPS:
        values = [mean_step(f, better, worse) for f in (short, long)]
        if all(v is None for v in values):
            continue
        cells = ["–" if v is None else f"{v:+.3f}" for v in values]
        lines.append(f"| {worse} → {better} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)
