"""Before and after a change, on the same folds: two cross-validations of ``paper.py`` compared.

    # the change's cells, on the folds (and study) of an earlier run
    python benchmarks/paper.py --profile cpu --workers 2 --only cv --no-nnunet \\
        --schemes mtmd+con,full --set regularization.ramp=0.5 --out AFTER
    python benchmarks/paper_ablation.py BEFORE AFTER --label "ramp 0.5"

Both folders hold a ``cv_metrics.csv`` (``paper.py``'s per-subject, per-bone scores). Every
scheme of AFTER is compared with the same scheme of BEFORE on the same subjects (paired
two-sided Wilcoxon per bone, Holm over the table), and the paper's ranking is tested again with
AFTER's schemes in place of BEFORE's. Writes ``AFTER/ablation.md`` and prints it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def read_cv(out: Path) -> pd.DataFrame:
    path = out / "cv_metrics.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: no cross-validation scores (run paper.py --only cv first)")
    frame = pd.read_csv(path)
    return frame[~frame["scheme"].str.startswith("nnU-Net")]


def compare(before: pd.DataFrame, after: pd.DataFrame, label: str) -> str:
    """The markdown report: mean Dice before/after, the paired tests of each changed scheme,
    and the ranking with the changed schemes in place."""
    import _paper_stats as stats

    changed = [s for s in dict.fromkeys(after["scheme"]) if s in set(before["scheme"])]
    if not changed:
        raise SystemExit("no scheme of the second run is in the first: nothing to compare")
    subjects = set(zip(after["dataset"], after["case"], strict=True))
    if not subjects <= set(zip(before["dataset"], before["case"], strict=True)):
        raise SystemExit("the runs were tested on different subjects: not the same folds")
    renamed = after.assign(scheme=after["scheme"] + f" ({label})")
    both = pd.concat([before, renamed], ignore_index=True)
    pairs = [(f"{s} ({label})", s) for s in changed]
    tests = stats.paired_tests(both, pairs, "dice")
    means = both.groupby("scheme", sort=False)["dice"].mean()
    order = [name for s in changed for name in (s, f"{s} ({label})")]
    replaced = pd.concat(
        [before[~before["scheme"].isin(changed)], after[after["scheme"].isin(changed)]],
        ignore_index=True,
    )
    lines = [
        f"### {label}: before and after, on the same subjects\n",
        "Mean Dice over bones and subjects: "
        + ", ".join(f"{name} {means[name]:.3f}" for name in order)
        + "\n",
        "#### Dice (mean ± SD over subjects)\n",
        stats.metric_table(both, order, "dice") + "\n",
        "#### After − before: median Δ Dice, two-sided Wilcoxon p (Holm over the table), "
        "rank-biserial r\n",
        stats.tests_table(tests, row_key="step") + "\n",
        f"#### The ranking with {', '.join(changed)} after the change (Holm over all steps "
        "and bones)\n",
        stats.tests_table(stats.ranking_tests(replaced, "dice"), row_key="step") + "\n",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="paper.py output folder without the change")
    parser.add_argument("after", type=Path, help="paper.py output folder with it")
    parser.add_argument("--label", default="after", help="the change, as the tables name it")
    args = parser.parse_args(argv)
    from jointseg.utils.atomic import atomic_write_text

    text = compare(read_cv(args.before), read_cv(args.after), args.label)
    atomic_write_text(args.after / "ablation.md", text)
    print(text)
    return text


if __name__ == "__main__":
    main()
