"""Test helper: (user text, label) pairs → canonical records, for the train and evaluate tests."""

import pandas as pd

from tasks.core import record_id

SYSTEM = "Route the ticket. Reply with the category only."


def chat_records(pairs) -> pd.DataFrame:
    rows = []
    for text, label in pairs:
        msgs = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": label},
        ]
        rows.append({"id": record_id(msgs), "messages": msgs, "source": "t", "created_at": "", "meta": {}})
    return pd.DataFrame(rows)
