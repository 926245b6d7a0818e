"""The shared messages validator: one reason code per way a chat can be broken, never any of its text."""

import numpy as np
import pytest

from tasks.messages import MessageProblem, coerce_messages, messages_problem

GOOD = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (GOOD, None),
        ('[{"role": "user", "content": "hi"}]', None),
        (np.array(GOOD, dtype=object), None),
        ("not json [", MessageProblem("messages_not_json")),
        ({"role": "user", "content": "hi"}, MessageProblem("messages_not_a_list")),
        (None, MessageProblem("messages_not_a_list")),
        ([], MessageProblem("no_messages")),
        ([GOOD[0], "text"], MessageProblem("message_not_an_object", 1)),
        ([{"content": "hi"}], MessageProblem("role_missing_or_not_text", 0)),
        ([{"role": 3, "content": "hi"}], MessageProblem("role_missing_or_not_text", 0)),
        ([{"role": "wizard", "content": "hi"}], MessageProblem("bad_role", 0)),
        ([{"role": "user"}], MessageProblem("content_missing", 0)),
        ([GOOD[0], {"role": "assistant", "content": None}], MessageProblem("non_string_content", 1)),
        ([{"role": "user", "content": b"\x00\x01"}], MessageProblem("binary_content", 0)),
        ([{"role": "user", "content": "a\x00b"}], MessageProblem("binary_content", 0)),
        ([{"role": "user", "content": "\x01\x02\x03\x04 ab"}], MessageProblem("binary_content", 0)),
        ([{"role": "user", "content": "bad \udcff byte"}], MessageProblem("invalid_utf8", 0)),
    ],
)
def test_each_problem_has_its_code_and_index(value, expected):
    assert messages_problem(value) == expected


def test_options_relax_roles_and_text_checks():
    odd = [{"role": "tool", "content": "a\x00b"}]
    assert messages_problem(odd).reason == "bad_role"
    assert messages_problem(odd, roles=None).reason == "binary_content"
    assert messages_problem(odd, roles=None, check_text=False) is None


def test_the_problem_never_quotes_the_text():
    secret = "jane.roe@example.com"
    for value in ([{"role": secret, "content": "x"}], [{"role": "user", "content": secret + "\x00"}], secret):
        assert secret not in repr(messages_problem(value))


def test_coerce_keeps_unparsable_text_as_text():
    assert coerce_messages("nope") == "nope"
    assert coerce_messages('[{"role": "user", "content": "hi"}]') == [{"role": "user", "content": "hi"}]
