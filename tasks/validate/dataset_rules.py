"""Rules judged on the whole dataset (after row quarantine), and the split-size rule judged after the split.

Each rule class owns its derived column, GX expectation, threshold text and summary, as in
:mod:`tasks.validate.rules`.
"""

from typing import ClassVar, Literal

import pandas as pd
from pydantic import Field, field_validator, model_validator

from tasks.core import StrictModel
from tasks.validate.rules import BaseRule, Measure, Summary, failing_ids, load_labels


class MinRowsRule(BaseRule):
    """The dataset (after row quarantine) has at least ``min`` rows."""

    rule: Literal["min_rows"]
    min: int = Field(ge=1, description="Fewest rows allowed.")
    level: ClassVar[str] = "dataset"

    def compile(self, d, contract, ns, kw):
        return None, ns.gx.expectations.ExpectTableRowCountToBeBetween(min_value=self.min, **kw)

    def threshold(self, contract) -> str:
        return f"≥ {self.min} rows"

    def summarise(self, res, col, ids) -> Summary:
        return Summary(f"{int(res.result.get('observed_value', 0))} rows", 0, [], failing_ids(res))


class LabelCoverageRule(BaseRule):
    """Every allowed label occurs in the data (a missing class means a source was cut or filtered wrongly)."""

    rule: Literal["label_coverage"]
    labels: list[str] | None = Field(None, description="The labels that must all occur, inline.")
    labels_file: str | None = Field(
        None, description="A JSON list (or a text file, one label per line), relative to the repository."
    )
    level: ClassVar[str] = "dataset"
    free_text_value: ClassVar[bool] = True

    @model_validator(mode="after")
    def _one_source(self):
        if (self.labels is None) == (self.labels_file is None):
            raise ValueError("give exactly one of `labels` and `labels_file`")
        return self

    def compile(self, d, contract, ns, kw):
        E = ns.gx.expectations
        labels = load_labels(contract, self)
        return d.label(), E.ExpectColumnDistinctValuesToContainSet(column=self.column, value_set=labels, **kw)

    def threshold(self, contract) -> str:
        return f"all {len(load_labels(contract, self))} labels occur"

    def summarise(self, res, col, ids) -> Summary:
        wanted = set(res.expectation_config.kwargs["value_set"])
        missing = sorted(wanted - set(col)) if col is not None else []
        shown = ", ".join(missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
        observed = f"{len(missing)} of {len(wanted)} labels missing" + (f": {shown}" if missing else "")
        return Summary(observed, 0, [], failing_ids(res))


class MinRowsPerClassRule(BaseRule):
    """Every label has at least ``min`` rows. With severity quarantine, the rows of smaller classes are set aside."""

    rule: Literal["min_rows_per_class"]
    min: int = Field(ge=1, description="Fewest rows a label needs.")
    level: ClassVar[str] = "dataset"
    quarantine_ok: ClassVar[bool] = True
    free_text_value: ClassVar[bool] = True

    @property
    def phase(self) -> int:
        return 2 if self.severity == "quarantine" else 3

    def compile(self, d, contract, ns, kw):
        # The label here; prepare() replaces it by the class size over the rows of the phase.
        return d.label(), ns.gx.expectations.ExpectColumnValuesToBeBetween(column=self.column, min_value=self.min, **kw)

    def prepare(self, frame: pd.DataFrame) -> None:
        col = frame[self.column]
        frame[self.column] = col.map(col.value_counts()).astype("int64")

    def threshold(self, contract) -> str:
        return f"≥ {self.min} rows/class"

    def summarise(self, res, col, ids) -> Summary:
        failing = failing_ids(res)
        n_fail = int(res.result.get("unexpected_count") or 0)
        observed = (
            f"smallest class {int(col.min())} rows ({col[col < self.min].index.size} rows in small classes)"
            if len(col)
            else "no rows"
        )
        return Summary(observed, n_fail, failing, failing)


class ClassBalanceRule(BaseRule):
    """The largest class is at most ``max_ratio`` times the size of the smallest."""

    rule: Literal["class_balance"]
    max_ratio: float = Field(gt=1, description="Largest / smallest class size.")
    level: ClassVar[str] = "dataset"

    def compile(self, d, contract, ns, kw):
        return d.label(), ns.ClassRatio(column=self.column, max_ratio=self.max_ratio, **kw)

    def threshold(self, contract) -> str:
        return f"ratio ≤ {self.max_ratio:g}"

    def summarise(self, res, col, ids) -> Summary:
        counts = col.value_counts()
        ratio = float(res.result.get("observed_value") or 0)
        observed = f"ratio {ratio:.1f} ({counts.max()}/{counts.min()} rows)" if len(counts) else "no rows"
        examples: list[str] = []
        if not res.success:
            examples = ids[col.isin(counts[counts == counts.min()].index)].tolist()
        return Summary(observed, len(examples), examples, failing_ids(res))


class DuplicateRateRule(BaseRule):
    """At most a ``max`` share of rows repeat an earlier row, by the key exact dedup uses."""

    rule: Literal["duplicate_rate"]
    max: float = Field(ge=0, le=1, description="Share of rows that are repeats (0.05 = 5 %).")
    compare: Literal["conversation", "prompt"] = Field(
        "conversation",
        description="conversation: all messages; prompt: every message but the final assistant answer.",
    )
    level: ClassVar[str] = "dataset"

    def compile(self, d, contract, ns, kw):
        # proportion of unique values = distinct / rows, so the repeat share is 1 - that.
        E = ns.gx.expectations
        exp = E.ExpectColumnProportionOfUniqueValuesToBeBetween(column=self.column, min_value=1.0 - self.max, **kw)
        return d.dup_key(self.compare), exp

    def threshold(self, contract) -> str:
        return f"≤ {self.max:.1%} ({self.compare})"

    def summarise(self, res, col, ids) -> Summary:
        dup = col.duplicated()
        observed = f"{dup.mean():.1%} ({int(dup.sum())} repeat rows)" if len(col) else "no rows"
        n_fail = int(dup.sum()) if not res.success else 0
        return Summary(observed, n_fail, ids[dup].tolist(), failing_ids(res))


class LengthPercentilesRule(BaseRule):
    """Token-length percentiles lie within bounds, e.g. ``{50: [8, 120], 95: [16, 400]}``."""

    rule: Literal["length_percentiles"]
    percentiles: dict[int, tuple[int | None, int | None]] = Field(
        min_length=1, description="Percentile (0-100) → [low, high] tokens; null means unbounded."
    )
    measure: Measure = Field("conversation", description="What is measured, as in token_length.")
    level: ClassVar[str] = "dataset"
    numeric: ClassVar[bool] = True

    @field_validator("percentiles")
    @classmethod
    def _in_range(cls, v):
        for p, (lo, hi) in v.items():
            if not 0 <= p <= 100:
                raise ValueError(f"percentile {p} is not between 0 and 100")
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"percentile {p}: low bound {lo} is above high bound {hi}")
        return v

    def compile(self, d, contract, ns, kw):
        ps = sorted(self.percentiles)
        ranges = {"quantiles": [p / 100 for p in ps], "value_ranges": [list(self.percentiles[p]) for p in ps]}
        return d.tokens(self.measure), ns.Percentiles(column=self.column, quantile_ranges=ranges, **kw)

    def threshold(self, contract) -> str:
        return ", ".join(
            f"p{p} in [{'-' if lo is None else lo}, {'-' if hi is None else hi}]"
            for p, (lo, hi) in sorted(self.percentiles.items())
        )

    def summarise(self, res, col, ids) -> Summary:
        obs = (res.result.get("observed_value") or {}).get("values") or []
        ps = sorted(self.percentiles)
        observed = ", ".join(f"p{p} {'n/a' if v is None else f'{v:g}'}" for p, v in zip(ps, obs, strict=False))
        if res.success:
            return Summary(observed, 0, [], failing_ids(res))
        vals = pd.to_numeric(col, errors="coerce")
        mask = pd.Series(False, index=col.index)
        for p, v in zip(ps, obs, strict=False):
            lo, hi = self.percentiles[p]
            if v is not None and hi is not None and v > hi:
                mask |= vals > hi
            if v is not None and lo is not None and v < lo:
                mask |= vals < lo
        return Summary(observed, int(mask.sum()), ids[mask].tolist(), failing_ids(res))


class SplitBounds(StrictModel):
    """Size bounds on one split."""

    min_rows: int = Field(1, ge=0, description="Fewest rows (1: the split must not be empty).")
    max_rows: int | None = Field(None, ge=1, description="Most rows (None: no limit).")
    min_fraction: float = Field(0.0, ge=0, le=1, description="Smallest share of train + val + test.")
    max_fraction: float = Field(1.0, ge=0, le=1, description="Largest share of train + val + test.")

    def threshold(self) -> str:
        text = f"≥ {self.min_rows} rows" if self.max_rows is None else f"{self.min_rows}–{self.max_rows} rows"
        if (self.min_fraction, self.max_fraction) != (0.0, 1.0):
            text += f", {self.min_fraction:.0%}–{self.max_fraction:.0%} of all"
        return text


class SplitSizesRule(BaseRule):
    """Checked after the split: validation and test splits are non-empty and within size bounds."""

    rule: Literal["split_sizes"]
    val: SplitBounds = Field(default_factory=SplitBounds, description="Bounds on the validation split.")
    test: SplitBounds = Field(default_factory=SplitBounds, description="Bounds on the test split.")
    level: ClassVar[str] = "split"

    SPLITS: ClassVar[tuple[str, ...]] = ("val", "test")

    def expectations(self, ns) -> list:
        """Two expectations per split (rows, share) over the one-row table of split sizes."""
        E = ns.gx.expectations
        out = []
        for split in self.SPLITS:
            b: SplitBounds = getattr(self, split)
            meta = {"rule": self.key, "severity": self.severity, "split": split}
            for what, lo, hi in (("rows", b.min_rows, b.max_rows), ("fraction", b.min_fraction, b.max_fraction)):
                out.append(
                    E.ExpectColumnValuesToBeBetween(
                        column=f"{split}_{what}",
                        min_value=lo,
                        max_value=hi,
                        description=self.description,
                        meta={**meta, "what": what},
                    )
                )
        return out

    def rows(self, ok: dict[tuple[str, str, str], bool], sizes: dict[str, int]) -> list[dict]:
        """The rules-table rows (one per split) from the expectations' verdicts ``ok[(rule, split, what)]``."""
        total = max(sum(sizes.values()), 1)
        out = []
        for split in self.SPLITS:
            passed = ok[(self.key, split, "rows")] and ok[(self.key, split, "fraction")]
            out.append(
                {
                    "rule": f"{self.key}.{split}",
                    "type": self.rule,
                    "severity": self.severity,
                    "description": self.description,
                    "observed": f"{sizes[split]} rows ({sizes[split] / total:.1%})",
                    "threshold": getattr(self, split).threshold(),
                    "passed": passed,
                    "rows_affected": 0 if passed else sizes[split],
                    "example_ids": [],
                }
            )
        return out
