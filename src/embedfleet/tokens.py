"""Token counts for API providers: exact with tiktoken, a safe estimate without.

Counts decide how a batch is split (OpenAI refuses a request whose inputs sum to
more than 300,000 tokens) and how fast requests are paced against a
tokens-per-minute quota. Both only need a count that is never too low, so when
tiktoken or its encoding file is missing, :func:`estimate_tokens` stands in.

The estimate
------------
OpenAI's encodings (cl100k_base, o200k_base) first cut text into pieces with a
regex (a word with at most one leading character, 1 to 3 digits, a run of
punctuation, a run of whitespace), then run BPE inside each piece; no token
crosses a piece. The estimate follows the same cut and adds, per piece:

* **non-ASCII characters**: their UTF-8 bytes. Every token holds at least one
  byte, and every token holding a non-ASCII byte holds a byte of its own, so
  these can never be undercounted (CJK, Cyrillic, Arabic, emoji... all land here).
* **digits**: ``ceil(n / 3)`` for a run of ``n``. Both encodings cut digits into
  groups of 1 to 3 from the left, and every such group is a single token, so
  this is exact.
* **punctuation and whitespace**: a run of one repeated character costs
  ``ceil(n / cap)``, where ``cap`` is a length that both vocabularies hold tokens
  for and BPE reaches (16 for ``-``, ``=`` and spaces, 8 for ``*``, ``.`` and
  newlines, 4 or 2 for other characters, checked against every run length up to
  200 in the tests). The last character of a whitespace run is a token of its
  own unless it is a space that the next word or punctuation run takes as its
  prefix (" the", " (" are single tokens for every ASCII letter and mark).
* **ASCII letters** are where BPE earns its keep: a common English word is one
  token whatever its length, while random letters take one token per two.
  A run costs ``1 + len // 10``, plus one for each adjacent pair of letters that
  is not among the 150 most frequent in English, each change of case inside a
  word (``aB``, ``ABc``), every second capital after the first, and each run of
  three consonants or three vowels; letters touching a digit (hashes, keys,
  ``4GB``) cost one each, which bounds them like bytes.

One token of slack is added per text, and the result is capped at the UTF-8
byte count, the hard upper bound. The letter rule is empirical, not proven: it
stays at or above both encodings on every sample tried (technical and legal
English, Python's standard library, web pages in 20 languages and random strings
of every ASCII class down to a few characters), and the tests hold English prose
to at most 1.6 times tiktoken's count overall. Never undercounting costs an
overcount that grows where BPE merges most (code, other Latin languages) and is
largest for non-ASCII scripts, which pay for the byte bound; the measured ratios
are in ``docs/benchmarks.md``. The tests check all of this against real tiktoken
counts.

tiktoken without the network
----------------------------
tiktoken downloads an encoding's file on first use and caches it under
``$TIKTOKEN_CACHE_DIR`` (else ``$DATA_GYM_CACHE_DIR``, else
``<tempdir>/data-gym-cache``), named by the SHA-1 of the file's URL. Offline
that download fails or hangs, so :func:`tiktoken_encoding` never asks tiktoken
to load anything: it reads the cached file itself, checks its SHA-256, and
builds the :class:`tiktoken.Encoding` from it. A missing or corrupt file means
``None`` and the estimate.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import tempfile
from collections.abc import Sequence
from typing import Any, NamedTuple

from embedfleet.errors import InvalidInputError

__all__ = ["count_tokens", "encoding_for_model", "estimate_tokens", "tiktoken_encoding"]

DEFAULT_ENCODING = "cl100k_base"

#: Every OpenAI embedding model so far; an unknown model also gets DEFAULT_ENCODING.
MODEL_ENCODINGS: dict[str, str] = {
    "text-embedding-3-small": "cl100k_base",
    "text-embedding-3-large": "cl100k_base",
    "text-embedding-ada-002": "cl100k_base",
}

# --------------------------------------------------------------------------- estimate

_PIECES = re.compile(
    r"(?P<letters>[A-Za-z]+)"
    r"|(?P<digits>[0-9]+)"
    r"|(?P<space>(?P<w>[\t\n\x0b\x0c\r ])(?P=w)*)"
    r"|(?P<punct>(?P<p>[!-/:-@\[-`{-~])(?P=p)*)"
    r"|(?P<other>[^\x00-\x7f]+)"
    r"|(?P<control>[\s\S])"
)
# Longest run of one character that is reliably a single token in both encodings.
_RUN_CAP = {" ": 16, "\n": 8, "\t": 4, "-": 16, "=": 16, "*": 8, ".": 8}
_RUN_CAP.update(dict.fromkeys("!#%()+,/;<>?_", 4))
_DEFAULT_PUNCT_CAP = 2
# A single space before these joins them in one token (" the", " (", " {").
_TAKES_A_SPACE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
)
# The 150 most frequent letter pairs inside English words (case folded).
_COMMON_PAIRS_TEXT = """
    ab ac ad ag ai al am an ap ar as at au be bl bu ca ce ch cl co cr ct cu de di do ea ec
    ed ee ef el em en ep er es et ev ex fe ff fi fo fu ge ha he hi ho ia ib ic id ie if ig
    il im in io ir is it ke la le li ll lo ls lu ly ma me mm mo mp na nc nd ne ng no ns nt
    nu ob oc od of ol om on op or os ot ou ow pa pe pl po pr pt ra re ri rm rn ro rr rs rt
    ry se si so sp ss st su ta te th ti to tr ts tt tu ty ue uf ul um un ur us ut va ve vi
    wh wi wo xp yo
"""
_COMMON_PAIRS = frozenset(_COMMON_PAIRS_TEXT.split())
_CASE_CHANGE = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z]{2})(?=[a-z])")
_CLUSTER = re.compile(r"[bcdfghjklmnpqrstvwxz]{3,}|[aeiouy]{3,}")
_LETTERS_PER_FREE_TOKEN = 10


@functools.lru_cache(maxsize=8192)  # words repeat in prose: each is costed once
def _letters_cost(run: str) -> int:
    """Tokens of one run of ASCII letters: about one per common word, up to one per
    two letters for strings that do not look like words."""
    folded = run.lower()
    cost = 1 + len(run) // _LETTERS_PER_FREE_TOKEN
    cost += sum(folded[i : i + 2] not in _COMMON_PAIRS for i in range(len(run) - 1))
    cost += len(_CASE_CHANGE.findall(run))
    cost += max(0, sum(ch.isupper() for ch in run) - 1) // 2
    cost += len(_CLUSTER.findall(folded))
    return cost


def estimate_tokens(text: str) -> int:
    """A token count of ``text`` that is never below cl100k_base's or o200k_base's
    and, for English prose, at most about 1.6 times it (see the module docstring)."""
    size = len(text.encode("utf-8"))
    end = len(text)
    total = 1
    for piece in _PIECES.finditer(text):
        kind = piece.lastgroup
        run = piece.group()
        if kind == "letters":
            before = text[piece.start() - 1] if piece.start() else ""
            after = text[piece.end()] if piece.end() < end else ""
            touches_digit = before.isdigit() or after.isdigit()
            total += len(run) if touches_digit else _letters_cost(run)
        elif kind == "digits":
            total += -(-len(run) // 3)
        elif kind == "space":
            total += -(-(len(run) - 1) // _RUN_CAP.get(run[0], 1))
            taken = run[0] == " " and piece.end() < end and text[piece.end()] in _TAKES_A_SPACE
            total += 0 if taken else 1
        elif kind == "punct":
            total += -(-len(run) // _RUN_CAP.get(run[0], _DEFAULT_PUNCT_CAP))
        elif kind == "other":
            total += len(run.encode("utf-8"))
        else:
            total += 1
    return min(total, size)


# --------------------------------------------------------------------------- tiktoken


class _EncodingSpec(NamedTuple):
    """What tiktoken needs to build an encoding, and where its file is cached."""

    cache_key: str  # sha1 of the URL tiktoken downloads the file from
    sha256: str  # the expected_hash in tiktoken_ext/openai_public.py
    pat_str: str
    special_tokens: dict[str, int]


_ENDOFTEXT = "<|endoftext|>"
_ENDOFPROMPT = "<|endofprompt|>"
_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
_ENCODINGS: dict[str, _EncodingSpec] = {
    "cl100k_base": _EncodingSpec(
        cache_key="9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=(
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
            r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
        ),
        special_tokens={
            _ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
    "o200k_base": _EncodingSpec(
        cache_key="fb374d419588a4632f3f557e76b4b70aebbca790",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"[^\r\n\p{L}\p{N}]?" + _UPPER + "*" + _LOWER + "+" + _CONTRACTION,
                r"[^\r\n\p{L}\p{N}]?" + _UPPER + "+" + _LOWER + "*" + _CONTRACTION,
                r"\p{N}{1,3}",
                r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
                r"\s*[\r\n]+",
                r"\s+(?!\S)",
                r"\s+",
            ]
        ),
        special_tokens={_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
}


def tiktoken_cache_dir() -> str | None:
    """The folder tiktoken caches encoding files in, as tiktoken itself decides it;
    ``None`` when ``TIKTOKEN_CACHE_DIR`` is set empty (tiktoken then caches nothing)."""
    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if variable in os.environ:
            return os.environ[variable] or None
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _read_ranks(spec: _EncodingSpec) -> dict[bytes, int] | None:
    folder = tiktoken_cache_dir()
    if folder is None:
        return None
    try:
        with open(os.path.join(folder, spec.cache_key), "rb") as file:
            data = file.read()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != spec.sha256:
        return None
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=16)
def tiktoken_encoding(name: str) -> Any | None:
    """The tiktoken ``Encoding`` called ``name``, or ``None`` when tiktoken is not
    installed, the name is not cl100k_base or o200k_base, or its file is not already
    in tiktoken's cache (checked by SHA-256). Never touches the network.

    The answer is cached for the process; ``tiktoken_encoding.cache_clear()`` looks again.
    """
    spec = _ENCODINGS.get(name)
    if spec is None:
        return None
    try:
        import tiktoken
    except ImportError:
        return None
    ranks = _read_ranks(spec)
    if ranks is None:
        return None
    return tiktoken.Encoding(
        name=name,
        pat_str=spec.pat_str,
        mergeable_ranks=ranks,
        special_tokens=spec.special_tokens,
    )


def encoding_for_model(model_name: str) -> str:
    """The tiktoken encoding of an OpenAI embedding model (cl100k_base for all of
    them, and for models this table does not know)."""
    return MODEL_ENCODINGS.get(model_name, DEFAULT_ENCODING)


def count_tokens(texts: Sequence[str], *, encoding: str | None = DEFAULT_ENCODING) -> list[int]:
    """Tokens of each text: exact when tiktoken and the encoding's file are available
    locally, else :func:`estimate_tokens`, which never counts fewer. ``encoding=None``
    always estimates. Special-token strings such as ``<|endoftext|>`` count as text."""
    if isinstance(texts, str):
        raise InvalidInputError("count_tokens takes a list of texts, not a str: wrap it in [...]")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(
                f"count_tokens takes a list of str; item {index} is {type(text).__name__}"
            )
    tokenizer = None if encoding is None else tiktoken_encoding(encoding)
    if tokenizer is None:
        return [estimate_tokens(text) for text in texts]
    return [len(tokenizer.encode_ordinary(text)) for text in texts]
