"""The evaluate stage's settings and result."""

from typing import Literal

from pydantic import BaseModel, Field

from tasks.core import StrictModel

# Shipped in the repository; an installed package without the examples folder skips the check (noted in the report).
# Self-Instruct's 175 human-written seed tasks (Apache-2.0), read where the shared data lies beside the checkout.
DEFAULT_FORGETTING_SET = "../shared/data/self_instruct_seed/seed_tasks.jsonl"


class JudgeConfig(StrictModel):
    """An optional pairwise LLM judge behind any OpenAI-compatible ``/v1/chat/completions`` endpoint."""

    url: str = Field(description="Base URL of the endpoint, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="Model name sent to the endpoint.")
    api_key_env: str | None = Field(
        "LORAFLOW_JUDGE_API_KEY",
        description="Environment variable holding the API key (read at call time, never logged or stored).",
    )
    api_key_secret: str | None = Field(
        None, description="Name of a Prefect Secret block holding the key, used when the variable is unset."
    )
    rubric: str = Field(
        "Which response follows the instruction better: correct, complete, faithful to the input, concise?",
        description="The question the judge answers for each pair.",
    )
    against: Literal["champion_or_best_baseline", "best_baseline"] = Field(
        "champion_or_best_baseline", description="What the candidate is compared with."
    )
    max_calls: int = Field(200, ge=0, description="Cap on judge calls per run (each item costs two: A/B and B/A).")
    timeout_s: float = Field(60.0, gt=0, description="Per-call HTTP timeout.")
    cache_dir: str | None = Field(
        None, description="Verdict cache folder (None: <loraflow home>/cache/judge). A re-run costs no calls."
    )


class ExternalModelConfig(StrictModel):
    """A hosted model scored as one more baseline row, through the same OpenAI-compatible client as the judge."""

    name: str = Field("external", description="Row name in the metrics (eval.<name>.<metric>).")
    url: str = Field(description="Base URL of the endpoint, e.g. https://api.example.com/v1.")
    model: str = Field(description="Model name sent to the endpoint.")
    api_key_env: str | None = Field("LORAFLOW_EXTERNAL_API_KEY", description="Environment variable with the key.")
    api_key_secret: str | None = Field(
        None, description="Prefect Secret block with the key (if the variable is unset)."
    )
    max_calls: int = Field(500, ge=0, description="Cap on calls (one per test prompt).")
    timeout_s: float = Field(60.0, gt=0, description="Per-call HTTP timeout.")


class EvalConfig(StrictModel):
    """How candidate, baselines and champion are compared on the test split."""

    task: Literal["classification", "generation", "json"] = Field(
        "classification",
        description="classification: one label (accuracy, constrained decoding); generation: free text "
        "(ROUGE-L, chrF, BLEU against every reference of the prompt); json: one JSON object (parse rate, schema "
        "validity, field-level P/R/F1, exact match).",
    )
    labels: list[str] | None = Field(
        None,
        description="The label set for constrained decoding (None: the distinct assistant answers in the data).",
    )
    constrained: bool = Field(
        True, description="Also decode constrained to the label set (classification only). Costs one more pass."
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="Cap on generated tokens (None: longest label + 4 for classification; for generation and json "
        "the 99th percentile of the train answers' token lengths x 1.25 + 4, at most 512).",
    )
    batch_size: int = Field(32, ge=1, description="Prompts per generation batch (left-padded, length-sorted).")
    max_rows: int | None = Field(
        None,
        ge=1,
        description="Evaluate a seeded sample of at most this many test prompts (None: all). For generation and "
        "json a prompt carries all its references.",
    )
    seed: int = Field(0, description="Seed of the max_rows sample, the few-shot pick and the bootstrap.")
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads during evaluation.")
    fewshot_k: int = Field(
        3,
        ge=0,
        le=16,
        description="Train examples in the base_fewshot baseline's prompt (0: no few-shot baseline).",
    )
    fewshot_pick: Literal["seeded", "diverse"] = Field(
        "seeded",
        description="seeded: a seeded sample of the train split, the same examples for every test prompt; "
        "diverse: the same, but at most one example per distinct answer (classification) or per intent-like "
        "first field (json).",
    )
    json_schema: str | None = Field(
        None, description="JSON Schema file for schema_valid (json task); None: only parse rate and fields."
    )
    bootstrap: int = Field(
        1000, ge=0, description="Paired bootstrap resamples for the candidate's intervals (0: no intervals)."
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Two-sided confidence of the intervals.")
    forgetting_set: str | None = Field(
        DEFAULT_FORGETTING_SET,
        description="General instructions (chat JSONL or prompt/completion JSONL) scored by answer loss, base vs "
        "candidate (None: no forgetting check). Point it at your own regression set.",
    )
    forgetting_rows: int = Field(40, ge=1, description="At most this many regression rows (seeded sample).")
    judge: JudgeConfig | None = Field(None, description="Optional pairwise LLM-as-judge (None: off).")
    external: ExternalModelConfig | None = Field(
        None, description="Optional hosted model scored as another baseline (None: off)."
    )
    report_examples: int = Field(8, ge=0, description="Side-by-side examples in the eval report.")


class EvalResult(BaseModel):
    """Metrics per model name, the candidate's intervals, and where the outputs are."""

    metrics: dict[str, dict[str, float]]
    predictions_uri: str
    predictions_csv_uri: str
    report_uri: str
    rows: int
    labels: int
    skipped: dict[str, str] = Field(default_factory=dict)
    intervals: dict[str, dict[str, dict[str, float]]] = Field(
        default_factory=dict,
        description="other model → metric → {diff, low, high} of candidate − other (paired bootstrap).",
    )
    forgetting: float | None = Field(
        None, description="Answer loss on the regression set, candidate minus base (positive: forgot)."
    )
    judge: dict[str, float | int | str] | None = None
    report_md_uri: str | None = None
    chart_uri: str | None = None
