"""_core.HeaderSend and _core.HeaderStart: the ASGI send and the WSGI
start_response that add rate limit headers as the response starts,
against the Python rule they replace
(``[*headers, *outer_headers(extra, headers)]``), hostile messages and
callbacks that re-enter them."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stanchion._adapt import outer_headers
from stanchion._core import Decision, HeaderSend, HeaderStart, RateHeaders

TRIO = [
    (b"x-ratelimit-limit", b"5"),
    (b"x-ratelimit-remaining", b"4"),
    (b"x-ratelimit-reset", b"12"),
]
IETF = [(b"ratelimit-policy", b'"g";q=5;w=60'), (b"ratelimit", b'"g";r=4;t=12')]

names = st.sampled_from(
    [
        *(b"content-type", b"x-ratelimit-limit", b"X-RateLimit-Limit"),
        *(b"X-RATELIMIT-LIMIT", b"x-ratelimit-limi", b"x-ratelimit-limitx"),
        *(b"ratelimit", b"set-cookie"),
    ]
)
header_lists = st.lists(st.tuples(names, st.binary(max_size=8)), max_size=6)
extras = st.sampled_from([[], IETF, TRIO, IETF + TRIO, TRIO[:2], [IETF[0]]])


@given(headers=header_lists, extra=extras)
def test_same_headers_as_the_python_rule(
    headers: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]
) -> None:
    sent: list[Any] = []
    app_list = list(headers)
    message = {"type": "http.response.start", "status": 200, "headers": app_list}
    HeaderSend(sent.append, extra)(message)
    assert sent == [{**message, "headers": [*headers, *outer_headers(extra, headers)]}]
    # The app's own message and list are never changed: it may send them
    # again.
    assert message == {"type": "http.response.start", "status": 200, "headers": headers}
    assert app_list == headers


def test_a_start_message_sent_again_gets_fresh_headers() -> None:
    """An app sending one module-level start message for every request:
    each response gets its own request's headers, never the earlier
    ones (which would also pass for an inner layer's X-RateLimit-*)."""
    start = {"type": "http.response.start", "status": 200, "headers": []}
    sent: list[Any] = []
    for remaining in (4, 3):
        d = Decision(True, 5, remaining, 12.0)
        HeaderSend(sent.append, RENDER, d)(start)
    assert start == {"type": "http.response.start", "status": 200, "headers": []}
    assert [m["headers"] for m in sent] == [
        RENDER.raw_pairs(Decision(True, 5, 4, 12.0)),
        RENDER.raw_pairs(Decision(True, 5, 3, 12.0)),
    ]


def test_other_messages_pass_through_untouched() -> None:
    sent: list[Any] = []
    hs = HeaderSend(sent.append, IETF)
    body = {"type": "http.response.body", "body": b"x"}
    assert hs(body) is None
    assert sent[0] is body and body == {"type": "http.response.body", "body": b"x"}
    start: dict[str, Any] = {"type": "http.response.start", "status": 200}
    hs(start)
    assert sent[-1]["headers"] == IETF  # no headers key: ours alone
    start = {"type": "http.response.start", "status": 200, "headers": None}
    hs(start)
    assert sent[-1]["headers"] == IETF
    start = {"type": "http.response.start", "headers": ((b"a", b"1"),)}
    hs(start)
    assert sent[-1]["headers"] == [(b"a", b"1"), *IETF]


def test_returns_what_send_returns_and_raises_what_it_raises() -> None:
    marker = object()
    assert HeaderSend(lambda m: marker, IETF)({"type": "x"}) is marker

    def fail(message: Any) -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError, match="gone"):
        HeaderSend(fail, IETF)({"type": "http.response.start"})


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((None, IETF), {}, "send must be callable"),
        ((print, [(b"a", "b")]), {}, r"\(bytes, bytes\) pairs"),
        ((print, [(b"a",)]), {}, r"\(bytes, bytes\) pairs"),
        ((print, [b"ab"]), {}, r"\(bytes, bytes\) pairs"),
        ((print, 5), {}, "not iterable"),
        ((print,), {}, "HeaderSend"),
        ((print, IETF), {"x": 1}, "keyword"),
    ],
)
def test_bad_arguments(args: Any, kwargs: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        HeaderSend(*args, **kwargs)


def test_bad_calls() -> None:
    hs = HeaderSend(print, IETF)
    with pytest.raises(TypeError, match="one message"):
        hs()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="one message"):
        hs({}, {})  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="one message"):
        hs(message={})  # type: ignore[call-arg]
    with pytest.raises(KeyError):
        hs({})
    with pytest.raises(TypeError):
        hs(None)
    with pytest.raises(TypeError):
        hs({"type": "http.response.start", "headers": 5})


def test_extra_is_copied_at_construction() -> None:
    extra = list(IETF)
    sent: list[Any] = []
    hs = HeaderSend(sent.append, extra)
    extra.clear()
    message: dict[str, Any] = {"type": "http.response.start", "headers": []}
    hs(message)
    assert sent[0]["headers"] == IETF


def test_reentrant_send_and_hostile_messages() -> None:
    """send calling the same wrapper again, a message whose methods
    change it, headers whose iteration fails or frees the wrapper: each
    answers or raises, nothing crashes."""
    sent: list[Any] = []
    hs: Any = None

    def send(message: Any) -> None:
        sent.append(message)
        if message["type"] == "http.response.start" and len(sent) < 3:
            hs({"type": "http.response.start", "headers": []})

    hs = HeaderSend(send, IETF)
    hs({"type": "http.response.start", "headers": []})
    assert len(sent) == 3 and all(m["headers"] == IETF for m in sent)

    class Shifty(dict):  # type: ignore[type-arg]
        def __getitem__(self, key: Any) -> Any:
            value = super().__getitem__(key)
            self.clear()
            return value

    shifty = Shifty(type="http.response.start", headers=[(b"a", b"1")])
    sent.clear()
    HeaderSend(sent.append, IETF)(shifty)
    # Reading "type" emptied it: no headers of the app's left to keep.
    assert sent[0]["headers"] == IETF

    def broken() -> Any:
        yield (b"a", b"1")
        raise RuntimeError("iteration failed")

    with pytest.raises(RuntimeError, match="iteration failed"):
        HeaderSend(print, IETF)({"type": "http.response.start", "headers": broken()})

    holder: list[Any] = []

    def dropping() -> Any:
        holder.clear()  # the last reference to the wrapper besides the call's
        gc.collect()
        yield (b"a", b"1")

    holder.append(HeaderSend(sent.append, IETF))
    sent.clear()
    holder[0]({"type": "http.response.start", "headers": dropping()})
    assert sent[0]["headers"] == [(b"a", b"1"), *IETF]


def test_no_reference_leaks_in_a_hot_loop() -> None:
    send_result = object()
    extra = list(IETF + TRIO)
    headers = [(b"content-type", b"text/plain")]

    def send(message: Any) -> object:
        return send_result

    objs = (send, send_result, headers, *extra[0], *headers[0])
    before = [sys.getrefcount(o) for o in objs]
    for _ in range(10_000):
        hs = HeaderSend(send, extra)
        hs({"type": "http.response.start", "headers": headers})
        hs({"type": "http.response.body", "body": b""})
    del hs
    assert [sys.getrefcount(o) for o in objs] == before


def test_a_cycle_through_the_wrapper_is_collected() -> None:
    import weakref

    class Send:
        def __call__(self, message: Any) -> None:
            pass

    s = Send()
    s.wrapper = HeaderSend(s, IETF)  # type: ignore[attr-defined]
    ref = weakref.ref(s)
    del s
    gc.collect()
    assert ref() is None


# -- rendered as the response starts: HeaderSend(send, render, decision) --------

RENDER = RateHeaders('"g";q=5;w=60', ('"g"',), (5,))
DECISION = Decision(True, 5, 4, 12.0)
str_names = st.sampled_from(
    [
        *("Content-Type", "x-ratelimit-limit", "X-RateLimit-Limit"),
        *("X-RATELIMIT-LIMIT", "x-ratelimit-limi", "X-RateLimit-Remaining"),
        *("RateLimit", "Set-Cookie"),
    ]
)
str_header_lists = st.lists(st.tuples(str_names, st.text(max_size=8)), max_size=6)


@given(headers=header_lists)
def test_rendered_send_is_the_copied_pairs_form(
    headers: list[tuple[bytes, bytes]],
) -> None:
    a: list[Any] = []
    b: list[Any] = []
    HeaderSend(a.append, RENDER, DECISION)(
        {"type": "http.response.start", "headers": list(headers)}
    )
    HeaderSend(b.append, RENDER.raw_pairs(DECISION))(
        {"type": "http.response.start", "headers": list(headers)}
    )
    assert a == b
    want = RENDER.raw_pairs(DECISION)
    assert a[0]["headers"] == [*headers, *outer_headers(want, headers)]


@given(headers=str_header_lists, extra=st.sampled_from([[], RENDER.pairs(DECISION)]))
def test_header_start_follows_the_python_rule(
    headers: list[tuple[str, str]], extra: list[tuple[str, str]]
) -> None:
    calls: list[Any] = []
    app_list = list(headers)
    HeaderStart(lambda *a: calls.append(a), extra)("200 OK", app_list)
    assert calls == [("200 OK", [*headers, *outer_headers(extra, headers)])]
    assert app_list == headers
    calls.clear()
    HeaderStart(lambda *a: calls.append(a), RENDER, DECISION)("200 OK", app_list, None)
    want = RENDER.pairs(DECISION)
    assert calls == [("200 OK", [*headers, *outer_headers(want, headers)], None)]


def test_header_start_reads_its_list_when_called() -> None:
    """Flask fills the list after the wrapper is made (in before_request)."""
    extra: list[tuple[str, str]] = []
    calls: list[Any] = []
    start = HeaderStart(lambda *a: calls.append(a) or "write", extra)
    RENDER.extend(DECISION, extra)
    assert start("429 Too Many Requests", [("A", "1")]) == "write"
    assert calls[0][1] == [("A", "1"), *RENDER.pairs(DECISION)]
    extra.append(("X", 5))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"\(str, str\) pairs"):
        start("200 OK", [])
    assert len(calls) == 1


def test_header_start_passes_exc_info_and_errors_through() -> None:
    calls: list[Any] = []
    start = HeaderStart(lambda *a: calls.append(a), [])
    err = (ValueError, ValueError("x"), None)
    start("500 Internal Server Error", [], err)
    assert calls == [("500 Internal Server Error", [], err)]

    def fail(*args: Any) -> None:
        raise RuntimeError("headers already sent")

    with pytest.raises(RuntimeError, match="already sent"):
        HeaderStart(fail, RENDER, DECISION)("200 OK", [])
    with pytest.raises(TypeError, match="status, headers"):
        start("200 OK")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="status, headers"):
        start("200 OK", [], None, None)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="status, headers"):
        start("200 OK", [], err, exc_info=err)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="status, headers"):
        start("200 OK", [], exc=err)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="status, headers"):
        start("200 OK", headers=[])  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        start("200 OK", 5)  # type: ignore[arg-type]
    assert len(calls) == 1


@pytest.mark.parametrize("form", ["list", "rendered"])
def test_header_start_takes_exc_info_by_keyword(form: str) -> None:
    """PEP 3333's start_response(status, response_headers, exc_info=None):
    an app may name exc_info, as the servers and the Python wrappers
    this replaces allow; it reaches the server's start_response."""
    calls: list[Any] = []
    what: Any = ([("RateLimit", "x")],) if form == "list" else (RENDER, DECISION)
    start = HeaderStart(lambda *a: calls.append(a) or "write", *what)
    want = what[0] if form == "list" else RENDER.pairs(DECISION)
    err = (ValueError, ValueError("x"), None)
    assert start("500 Internal Server Error", [("A", "1")], exc_info=err) == "write"
    assert start("200 OK", [], exc_info=None) == "write"
    assert calls == [
        ("500 Internal Server Error", [("A", "1"), *want], err),
        ("200 OK", want, None),
    ]


@pytest.mark.parametrize(
    ("cls", "args", "match"),
    [
        (HeaderSend, (print, RENDER, None), "decision must be a Decision"),
        (HeaderSend, (print, None, DECISION), "render must be a RateHeaders"),
        (HeaderSend, (print, RENDER, DECISION, 1), "got 4 arguments"),
        (HeaderStart, (None, []), "start_response must be callable"),
        (HeaderStart, (print, ()), "extra must be a list"),
        (HeaderStart, (print, RENDER, 5), "decision must be a Decision"),
        (HeaderStart, (print,), "got 1 arguments"),
    ],
)
def test_bad_constructor_arguments(cls: Any, args: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        cls(*args)
    with pytest.raises(TypeError, match=match):
        type.__call__(cls, *args)  # through tp_new as well as vectorcall
    with pytest.raises(TypeError, match="keyword"):
        cls(print, [], x=1)


def test_reentrant_start_response() -> None:
    """start_response calling the same wrapper again (an error page
    started from inside the server's own callback): each call adds the
    headers to its own list."""
    calls: list[Any] = []
    start: Any = None

    def server_start(status: str, headers: Any, *exc: Any) -> None:
        calls.append((status, headers))
        if len(calls) < 3:
            start("500 Internal Server Error", [])

    start = HeaderStart(server_start, RENDER, DECISION)
    start("200 OK", [])
    want = RENDER.pairs(DECISION)
    assert [c[1] for c in calls] == [want, want, want]


def test_deep_chains_of_wrappers_neither_overflow_nor_crash() -> None:
    """Wrappers wrapping wrappers, far deeper than the interpreter's
    recursion limit: a call raises RecursionError, and freeing the chain
    does not overflow the C stack (run apart: a crash would end it)."""
    code = """if True:
        import sys
        from stanchion._core import HeaderSend, HeaderStart
        for cls, call in ((HeaderSend, lambda w: w({"type": "x"})),
                          (HeaderStart, lambda w: w("200 OK", []))):
            w = lambda *a: None
            for _ in range(300_000):
                w = cls(w, [])
            try:
                call(w)
            except RecursionError:
                print("RecursionError")
            del w
        print("freed")
        """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert (out.returncode, out.stdout.split()) == (
        0,
        ["RecursionError", "RecursionError", "freed"],
    ), out.stderr[-2000:]


def test_rendered_forms_leak_nothing_in_a_hot_loop() -> None:
    headers = [(b"content-type", b"text/plain")]
    str_headers = [("Content-Type", "text/plain")]

    def send(message: Any) -> None:
        return None

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    objs = (send, start_response, RENDER, DECISION, headers, str_headers)
    before = [sys.getrefcount(o) for o in objs]
    for _ in range(10_000):
        hs = HeaderSend(send, RENDER, DECISION)
        hs({"type": "http.response.start", "headers": headers})
        hs({"type": "http.response.body", "body": b""})
        HeaderStart(start_response, RENDER, DECISION)("200 OK", str_headers)
        HeaderStart(start_response, [])("200 OK", str_headers)
    del hs
    assert [sys.getrefcount(o) for o in objs] == before
