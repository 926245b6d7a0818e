"""Token counts of many texts with a Hugging Face tokenizer, tokenising each distinct piece once."""

import re


class PieceCounter:
    """Token counts of many texts, tokenising each distinct piece between special tokens once.

    A chat-template rendering repeats the same pieces in every row (the system prompt, ``assistant\\nlabel``);
    special tokens are hard boundaries for a Hugging Face tokenizer, so the count of a text is the number of
    special tokens plus the counts of the pieces between them. That holds for byte-level BPE (SmolLM2, GPT-2,
    Llama 3) but not for tokenizers that normalise the whole string (a sentencepiece prefix space on the first
    piece only), so it is checked on a sample first and whole texts are tokenised when it does not hold.
    On BANKING77-shaped rows this tokenises ~40 % of the text.
    """

    def __init__(self, tok, batch_size: int):
        self.tok = tok
        self.bs = batch_size
        self.backend = getattr(tok, "backend_tokenizer", None)  # the Rust tokenizer: batches without per-row Python
        specials = sorted({t for t in getattr(tok, "all_special_tokens", []) if t} | self._added(), key=len)[::-1]
        self.split = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        self.specials = set(specials)
        self.cache: dict[str, int] = {}

    def _added(self) -> set[str]:
        try:
            return {t.content for t in self.backend.get_added_tokens_decoder().values() if t.special}
        except AttributeError:
            return set()

    def _encode(self, texts: list[str]) -> list[int]:
        out: list[int] = []
        for start in range(0, len(texts), self.bs):
            batch = texts[start : start + self.bs]
            if self.backend is not None:
                out += [len(e.ids) for e in self.backend.encode_batch(batch, add_special_tokens=False)]
            else:
                out += [len(x) for x in self.tok(batch, add_special_tokens=False)["input_ids"]]
        return out

    def _by_pieces(self, texts: list[str]) -> list[int]:
        split = [[p for p in self.split.split(t) if p] for t in texts]
        todo = list({p for ps in split for p in ps if p not in self.specials and p not in self.cache})
        self.cache.update(zip(todo, self._encode(todo), strict=True))
        return [sum(1 if p in self.specials else self.cache[p] for p in ps) for ps in split]

    def count(self, texts: list[str]) -> list[int]:
        """The token count of each text (no special tokens added)."""
        if self.split is None or len(texts) < 1000:
            return self._encode(texts)
        sample = texts[:: max(1, len(texts) // 200)]
        if self._by_pieces(sample) != self._encode(sample):
            return self._encode(texts)
        return self._by_pieces(texts)
