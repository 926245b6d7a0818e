"""Great Expectations plumbing: loraflow's custom expectations and one ephemeral context per validation."""

import functools
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pandas as pd


def _role_order_expectation(PandasExecutionEngine):
    from great_expectations.expectations.expectation import ColumnMapExpectation
    from great_expectations.expectations.metrics import ColumnMapMetricProvider, column_condition_partial

    class ColumnValuesChatRoleOrder(ColumnMapMetricProvider):
        """Role-pattern strings (s/u/a per message) of the form ``s? (u a)+``, with system / turn limits."""

        condition_metric_name = "column_values.loraflow_chat_role_order"
        condition_value_keys = ("system", "max_turns")

        @column_condition_partial(engine=PandasExecutionEngine)
        def _pandas(cls, column, system="optional", max_turns=None, **kwargs):
            head = {"optional": "s?", "required": "s", "forbidden": ""}[system]
            turns = "+" if max_turns is None else f"{{1,{int(max_turns)}}}"
            return column.astype(str).str.fullmatch(f"{head}(?:ua){turns}")

    class ExpectColumnValuesToFollowChatRoleOrder(ColumnMapExpectation):
        """Expect each conversation's roles to go system? → user → assistant, alternating, ending with assistant.

        The column holds one letter per message: s(ystem), u(ser), a(ssistant), ? (anything else).
        """

        system: Literal["optional", "required", "forbidden"] = "optional"
        max_turns: int | None = None
        map_metric = "column_values.loraflow_chat_role_order"
        success_keys = ("system", "max_turns", "mostly")

    return ExpectColumnValuesToFollowChatRoleOrder


def _class_ratio_expectation(PandasExecutionEngine):
    from great_expectations.expectations.expectation import ColumnAggregateExpectation
    from great_expectations.expectations.metrics import ColumnAggregateMetricProvider, column_aggregate_value

    class ColumnClassImbalanceRatio(ColumnAggregateMetricProvider):
        """Size of the largest class divided by the size of the smallest (1.0 = balanced)."""

        metric_name = "column.loraflow_class_imbalance_ratio"

        @column_aggregate_value(engine=PandasExecutionEngine)
        def _pandas(cls, column, **kwargs):
            counts = column.value_counts()
            return float(counts.max() / counts.min()) if len(counts) else 1.0

    class ExpectColumnClassImbalanceRatioToBeAtMost(ColumnAggregateExpectation):
        """Expect the largest class to have at most ``max_ratio`` times the rows of the smallest class."""

        max_ratio: float
        metric_dependencies = ("column.loraflow_class_imbalance_ratio",)
        success_keys = ("max_ratio",)

        def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
            ratio = float(metrics["column.loraflow_class_imbalance_ratio"])
            return {"success": bool(ratio <= self.max_ratio), "result": {"observed_value": ratio}}

    return ExpectColumnClassImbalanceRatioToBeAtMost


def _percentiles_expectation():
    from great_expectations.expectations.core.expect_column_quantile_values_to_be_between import (
        ExpectColumnQuantileValuesToBeBetween,
    )

    class ExpectColumnPercentilesToBeBetween(ExpectColumnQuantileValuesToBeBetween):
        """GX's quantile expectation with plain-Python results (1.24 returns numpy bools JSON cannot store)."""

        def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
            out = super()._validate(metrics, runtime_configuration, execution_engine)
            res = out["result"]
            res["details"]["success_details"] = [bool(x) for x in res["details"]["success_details"]]
            res["observed_value"]["values"] = [
                None if v is None or pd.isna(v) else float(v) for v in res["observed_value"]["values"]
            ]
            return {**out, "success": bool(out["success"])}

    return ExpectColumnPercentilesToBeBetween


@functools.cache
def gx_namespace() -> SimpleNamespace:
    """Import GX (lazily, ~2 s) and define loraflow's custom expectations once per process.

    Returns a namespace with ``gx`` (the module), ``RoleOrder``, ``ClassRatio`` and ``Percentiles``.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.execution_engine import PandasExecutionEngine

    # GX logs at INFO on some of its own loggers (base.py sets INFO explicitly): keep the pipeline's log clean.
    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return SimpleNamespace(
        gx=gx,
        RoleOrder=_role_order_expectation(PandasExecutionEngine),
        ClassRatio=_class_ratio_expectation(PandasExecutionEngine),
        Percentiles=_percentiles_expectation(),
    )


class GxRun:
    """One ephemeral GX context per validation: a pandas data source, a dataframe asset, suites per phase.

    Args:
        docs_dir: where Data Docs (HTML) are built; None builds none.
    """

    def __init__(self, docs_dir: Path | None):
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self.ns = gx_namespace()
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
            analytics_enabled=False,
        )
        self.ctx = self.ns.gx.get_context(mode="ephemeral", project_config=config)
        self.docs_dir = docs_dir
        if docs_dir is not None:
            self.ctx.add_data_docs_site(
                site_name="loraflow",
                site_config={
                    "class_name": "SiteBuilder",
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )
        source = self.ctx.data_sources.add_pandas("loraflow")
        self.asset = source.add_dataframe_asset("records")
        self.batch = self.asset.add_batch_definition_whole_dataframe("all_rows")
        self.results: list[dict[str, Any]] = []

    def run(self, suite_name: str, expectations: list, frame: pd.DataFrame, ids: bool = True):
        """Run ``expectations`` as one suite over ``frame``; the result is kept for the results JSON.

        Args:
            suite_name: unique within this run.
            expectations: GX expectation objects.
            frame: the table (derived columns and ``id``).
            ids: report failing rows by ``id`` only, never their values (False: GX's default result).
        """
        gx = self.ns.gx
        suite = self.ctx.suites.add(gx.ExpectationSuite(name=suite_name))
        for e in expectations:
            suite.add_expectation(e)
        vd = self.ctx.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=self.batch, suite=suite))
        fmt: dict[str, Any] = {"result_format": "COMPLETE", "unexpected_index_column_names": ["id"]}
        if ids:
            fmt["exclude_unexpected_values"] = True  # GX reports the failing ids only, never the failing values
        result = vd.run(batch_parameters={"dataframe": frame}, result_format=fmt)
        self.results.append(result.to_json_dict())
        return result

    def build_docs(self) -> str | None:
        """Build the Data Docs site; the path of its index page (None when there is none)."""
        if self.docs_dir is None:
            return None
        self.ctx.build_data_docs(site_names=["loraflow"])
        index = self.docs_dir / "index.html"
        return str(index) if index.exists() else None
