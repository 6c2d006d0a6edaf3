"""What a completion reply may carry (keep/inside/introspection.py): only dotted names that
continue what the user typed — also in the shape IPython answers attributes in (``.city`` from
after ``df``, as ipykernel's reply has it)."""

from __future__ import annotations

from keepbook.keep.inside.introspection import completion


def complete(reply: dict, code: str) -> dict:
    return completion("names", code, len(code), lambda: reply, lambda n: None)


def test_an_attribute_answered_from_after_the_object_is_kept_with_its_start():
    out = complete({"matches": [".city", ".cities"], "cursor_start": 2}, "df.ci")
    assert (out["matches"], out["cursor_start"], out["cursor_end"]) == ([".city", ".cities"], 2, 5)


def test_whole_names_from_the_tokens_start_are_kept():
    for start in (4, 0):  # 0 lies before the token: the token's own start is used
        out = complete({"matches": ["keep_only_variable", "x = 1"], "cursor_start": start},
                       "x = keep_only_v")
        assert (out["matches"], out["cursor_start"]) == (["keep_only_variable"], 4)


def test_values_and_names_that_do_not_continue_the_token_are_dropped():
    reply = {"matches": [".city", ".c1ty = 'Oslo'", ".other", "df.city", ". city", ".ci.ty"],
             "cursor_start": 2}
    assert complete(reply, "df.ci")["matches"] == [".city", ".ci.ty"]


def test_a_start_the_guest_makes_up_falls_back_to_the_token():
    for start in (-1, 9, True, "2", None):
        out = complete({"matches": [".city", "df.city"], "cursor_start": start}, "df.ci")
        assert (out["matches"], out["cursor_start"]) == (["df.city"], 0)
