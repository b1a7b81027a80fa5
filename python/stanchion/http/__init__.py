"""The HTTP layer shared by every framework adapter.

A :class:`Rule` says which requests are limited, at what rate, keyed on
what, and what the client is told. The adapters (``stanchion.asgi``,
``stanchion.fastapi``, ``stanchion.wsgi``, ``stanchion.flask``,
``stanchion.django``, ``stanchion.hug``) turn their framework's request
into a :class:`Request` view, ask the rule for a :class:`Verdict`, and
turn the verdict into headers or a 429 response.

The package holds one concept per module: ``request`` (the request view,
``SettingError``, shared constants), ``address`` (the client address and
the trusted-proxy walk), ``identity`` (key functions), ``limiters`` (one
limiter per distinct rate, plans), ``headers`` (verdicts, 429 replies,
rate limit headers), ``keys`` (packed bucket keys of addresses) and
``rule`` (the :class:`Rule`), ``access`` (allow and deny lists).
"""

from __future__ import annotations

from .access import AccessList
from .address import ClientAddress
from .address import _canonical as _canonical
from .address import _parse_ip as _parse_ip
from .headers import Reply, Verdict, problem_json
from .headers import ResponseFunc as ResponseFunc
from .headers import _HeaderParts as _HeaderParts
from .identity import _API_KEY_HEADERS as _API_KEY_HEADERS
from .identity import KeyFunc as KeyFunc
from .identity import _digest as _digest
from .identity import _safe_identity as _safe_identity
from .identity import api_key, authenticated_user
from .keys import _SCOPE_TAGS as _SCOPE_TAGS
from .keys import MAX_ADDRESS_KEYS as MAX_ADDRESS_KEYS
from .keys import MAX_SCOPE_TAGS as MAX_SCOPE_TAGS
from .keys import _pack_address as _pack_address
from .keys import _scope_tags as _scope_tags
from .limiters import LimiterCache, Plans
from .limiters import _capacity as _capacity
from .limiters import _RateInfo as _RateInfo
from .request import HEADER_FAMILIES, Request, SettingError
from .request import MAX_ADDRESS as MAX_ADDRESS
from .request import MAX_HOPS as MAX_HOPS
from .request import MAX_IDENTITY as MAX_IDENTITY
from .request import MAX_LIMITERS as MAX_LIMITERS
from .request import NS as NS
from .request import PROBLEM_TYPE as PROBLEM_TYPE
from .request import RateSpec as RateSpec
from .request import log as log
from .rule import Rule
from .rule import _check_cost as _check_cost
from .rule import middleware_rule as middleware_rule

__all__ = [
    "HEADER_FAMILIES",
    "AccessList",
    "ClientAddress",
    "LimiterCache",
    "Plans",
    "Reply",
    "Request",
    "Rule",
    "SettingError",
    "Verdict",
    "api_key",
    "authenticated_user",
    "problem_json",
]
