"""Chunking: the library choice, chunking time against embedding time, and retrieval.

    python scripts/bench_chunking.py                 # everything, at full scale
    python scripts/bench_chunking.py --repeat 2 --embed-chunks 64 --skip-retrieval

Three parts, each printed as a table (``--report PATH`` writes them as JSON):

1. **Libraries** (``--skip-libraries``): semantic-text-splitter and semchunk, each in its
   own greedy mode at the default model's budget (254 tokens of text), and embedfleet's
   chunker (semantic-text-splitter's units, content-defined cuts), on long documents
   (data/long_retrieval, documents in several scripts, Markdown with code, awkward text):
   seconds per million tokens; chunks and their mean size; where chunks end (paragraph
   break, sentence or line end, inside a word); chunks over the model's limit as the
   model counts them; non-whitespace characters in no chunk; and how many chunks a
   re-run would embed after one paragraph is inserted into prose, and after one line is
   inserted into 600 similar lines (log-like text).
2. **Throughput**: embedfleet's chunking time per million tokens, and the same texts'
   embedding time with the default model in-process (a sample of ``--embed-chunks``
   chunks, scaled per token): the ratio is what chunking adds to a run.
3. **Retrieval** (``--skip-retrieval``): document-level recall@1 and @5 on
   data/long_retrieval, one vector per document (truncated) against chunks.

Timings are the best of ``--passes`` interleaved passes; on a loaded machine compare
ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests/long_texts.py: the long documents the tests use

from tests.long_texts import long_documents, shipped_documents  # noqa: E402

from embedfleet.embedding_functions import DefaultEmbeddingFunction  # noqa: E402
from embedfleet.job.chunking import Chunker  # noqa: E402
from embedfleet.retrieval_eval import evaluate, load_long_retrieval  # noqa: E402

Spans = list[tuple[int, int]]
Splitter = Callable[[str], Spans]
_SPACED_LETTER = re.compile(r"[^\W_\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u2e80-\u9fff]")


def splitters(counter: Any, tokenizer: Any, budget: int) -> dict[str, Callable[[], Splitter]]:
    """Each candidate as a factory of text -> chunk spans (a fresh one per timed pass:
    semchunk memoizes token counts, which would make a second pass over the same texts a
    lookup)."""
    import semchunk
    from semantic_text_splitter import TextSplitter

    def sts() -> Splitter:
        splitter = TextSplitter.from_huggingface_tokenizer(tokenizer, budget)
        return lambda text: [(at, at + len(piece)) for at, piece in splitter.chunk_indices(text)]

    def sem() -> Splitter:
        chunker = semchunk.chunkerify(tokenizer, budget)
        return lambda text: list(chunker(text, offsets=True)[1])

    def ours() -> Splitter:
        chunker = Chunker(counter)
        return lambda text: [(chunk.start, chunk.end) for chunk in chunker.split([text])[0]]

    return {
        "semantic-text-splitter (greedy)": sts,
        "semchunk (greedy)": sem,
        "embedfleet (sts units, content-defined)": ours,
    }


def quality(name: str, split: Callable[[str], Spans], texts: list[str], counter: Any) -> dict:
    """Where chunks end, how full they are, whether any passes the limit or misses text."""
    spans = [split(text) for text in texts]
    pieces = [
        text[start:end] for text, found in zip(texts, spans, strict=True) for start, end in found
    ]
    counts = counter.count(pieces)
    ends = [(text, end) for text, found in zip(texts, spans, strict=True) for _, end in found[:-1]]
    paragraph = sum(bool(re.match(r"[ \t]*\n[ \t]*\n", text[end:])) for text, end in ends)
    sentence = sum(
        bool(re.search(r"[.!?\u3002\uff01\uff1f:;][\"')\]]*\s*$", text[max(0, end - 4) : end]))
        or text[end : end + 1] == "\n"
        or bool(re.match(r"[ \t]*\n[ \t]*\n", text[end:]))
        for text, end in ends
    )
    inside = sum(
        bool(_SPACED_LETTER.match(text[end - 1]) and _SPACED_LETTER.match(text[end]))
        for text, end in ends
    )
    uncovered = 0
    for text, found in zip(texts, spans, strict=True):
        covered = bytearray(len(text))
        for start, end in found:
            covered[start:end] = b"\x01" * (end - start)
        uncovered += sum(1 for i, char in enumerate(text) if not char.isspace() and not covered[i])
    return {
        "splitter": name,
        "chunks": len(pieces),
        "mean_tokens": round(statistics.mean(counts) - counter.overhead, 1),
        "at_paragraph": round(paragraph / max(len(ends), 1), 3),
        "at_sentence_or_line": round(sentence / max(len(ends), 1), 3),
        "inside_word": inside,
        "over_limit": sum(count > counter.limit for count in counts),
        "uncovered_chars": uncovered,
    }


def resync(split: Callable[[str], Spans], seed: int = 0, trials: int = 8) -> dict[str, float]:
    """Chunks a re-run embeds after one insertion: into prose, and into similar lines."""
    rng = random.Random(seed)
    prose = [part for text in shipped_documents()[:6] for part in text.split("\n\n")]
    lines = [f"Entry {i:04d}: the record was updated by the night team." for i in range(600)]
    result = {}
    for label, items, joiner in (("prose", prose, "\n\n"), ("lines", lines, "\n")):
        text = joiner.join(items)
        before = {text[start:end] for start, end in split(text)}
        counts = []
        for trial in range(trials):
            at = rng.randrange(len(items) // 4, 3 * len(items) // 4)
            new = joiner.join([*items[:at], f"An inserted paragraph, number {trial}.", *items[at:]])
            counts.append(sum(new[start:end] not in before for start, end in split(new)))
        result[f"resync_{label}"] = round(statistics.mean(counts), 2)
    return result


def units(texts: list[str], characters: int, passes: int, tokens: int) -> list[dict]:
    """Both libraries cutting text into units of at most ``characters`` characters, the
    step embedfleet's chunker asks of its library (seconds per million tokens)."""
    import semchunk
    from semantic_text_splitter import TextSplitter

    sts = TextSplitter(characters, trim=False)
    candidates = {
        "semantic-text-splitter": lambda: [sts.chunk_indices(text) for text in texts],
        "semchunk": lambda: [
            semchunk.chunk(t, characters, len, offsets=True, memoize=False) for t in texts
        ],
    }
    return [
        {"units by": name, "s_per_million_tokens": round(best_of(passes, work) * 1e6 / tokens, 2)}
        for name, work in candidates.items()
    ]


def best_of(passes: int, work: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(passes):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def libraries(texts: list[str], counter: Any, passes: int) -> list[dict]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(
        str(Path(DefaultEmbeddingFunction().source.source) / "tokenizer.json")
    )
    tokenizer.no_truncation()
    tokenizer.no_padding()
    budget = counter.limit - counter.overhead
    tokens = sum(counter.count(texts)) - counter.overhead * len(texts)
    rows = []
    for name, make in splitters(counter, tokenizer, budget).items():
        seconds = float("inf")
        for _ in range(passes):
            split = make()
            started = time.perf_counter()
            for text in texts:
                split(text)
            seconds = min(seconds, time.perf_counter() - started)
        split = make()
        row = quality(name, split, texts, counter)
        row["s_per_million_tokens"] = round(seconds * 1e6 / tokens, 2)
        row.update(resync(split))
        rows.append(row)
    return rows


def throughput(texts: list[str], repeat: int, embed_chunks: int, passes: int) -> dict:
    function = DefaultEmbeddingFunction()
    counter = function.token_counter()
    corpus = texts * repeat
    tokens = sum(counter.count(corpus)) - counter.overhead * len(corpus)
    chunker = Chunker(counter)
    chunk_seconds = best_of(passes, lambda: chunker.split(corpus))
    pieces = [chunk.text for chunks in chunker.split(texts) for chunk in chunks]
    sample = random.Random(0).sample(pieces, min(embed_chunks, len(pieces)))
    function(sample[:8])  # load the model and its guards: not part of the timing
    sample_tokens = sum(counter.count(sample)) - counter.overhead * len(sample)
    embed_seconds = best_of(passes, lambda: function(sample))
    chunk_rate = chunk_seconds * 1e6 / tokens
    embed_rate = embed_seconds * 1e6 / sample_tokens
    return {
        "tokens_chunked": tokens,
        "chunking_s_per_million_tokens": round(chunk_rate, 2),
        "embedding_s_per_million_tokens": round(embed_rate, 1),
        "embedding_precision": function.precision,
        "chunks_embedded_for_timing": len(sample),
        "chunking_over_embedding": round(chunk_rate / embed_rate, 4),
    }


def retrieval() -> list[dict]:
    function = DefaultEmbeddingFunction(precision="fp32")
    labelled = load_long_retrieval(REPO / "data" / "long_retrieval")
    rows = []
    for label, chunking in (("one vector per document", None), ("chunks (defaults)", {})):
        result = evaluate(function, labelled, chunking=chunking)
        rows.append(
            {
                "documents as": label,
                "vectors": result.vectors,
                "recall@1": round(result.recall[1], 3),
                "recall@5": round(result.recall[5], 3),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    widths = {key: max(len(key), *(len(str(row[key])) for row in rows)) for key in keys}
    lines = ["  ".join(key.ljust(widths[key]) for key in keys)]
    lines += ["  ".join(str(row[key]).ljust(widths[key]) for key in keys) for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="corpus copies chunked for timing")
    parser.add_argument("--embed-chunks", type=int, default=200, help="chunks embedded for timing")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--skip-libraries", action="store_true")
    parser.add_argument("--skip-retrieval", action="store_true")
    parser.add_argument("--report", metavar="PATH", help="write the results as JSON")
    arguments = parser.parse_args()
    texts = long_documents()
    counter = DefaultEmbeddingFunction().token_counter()
    report: dict[str, Any] = {}
    if not arguments.skip_libraries:
        report["libraries"] = libraries(texts, counter, arguments.passes)
        print(table(report["libraries"]), end="\n\n")
        tokens = sum(counter.count(texts)) - counter.overhead * len(texts)
        unit_chars = Chunker(counter).unit_chars
        report["units"] = units(texts, unit_chars, arguments.passes, tokens)
        print(table(report["units"]), end="\n\n")
    report["throughput"] = throughput(
        texts, arguments.repeat, arguments.embed_chunks, arguments.passes
    )
    print(table([report["throughput"]]), end="\n\n")
    if not arguments.skip_retrieval:
        report["retrieval"] = retrieval()
        print(table(report["retrieval"]))
    if arguments.report:
        Path(arguments.report).write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
