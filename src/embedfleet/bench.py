"""``embedfleet bench``: the same corpus through every path, side by side.

(a) plain sentence-transformers ``encode`` in fp32, the baseline a user would
write; (b) the in-process ``DefaultEmbeddingFunction``; where installed, the
same on ONNX Runtime and Chroma's own default function; (c) a full job (read
JSON Lines, shard, embed on the fleet, write Parquet). Throughput is the steady
state after start-up (for the job: after the lock, plan, Ray and the fleet with
its models are up, and before the finish: fleet stop, checks, manifest); both
are reported separately. Compare ratios, which
are measured in one run on one machine, not absolute numbers across machines.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from embedfleet.embedding_functions.local.guard_corpus import corpus


def run_benchmark(
    docs: int,
    *,
    replicas: int | None = None,
    num_cpus: float = 1,
    device: str = "auto",
    num_gpus: float | None = None,
) -> list[dict[str, Any]]:
    """Every path on one generated corpus of ``docs`` documents, on ``device`` ("auto":
    the GPU where one is visible). On a GPU the baseline ``encode`` runs there in fp32,
    and the job's ``replicas`` (default: one per visible GPU) take ``num_gpus`` each
    (default 1): Ray pins each to its own device."""
    from sentence_transformers import SentenceTransformer

    from embedfleet.embedding_functions import DefaultEmbeddingFunction
    from embedfleet.embedding_functions.local.models import attention_implementation
    from embedfleet.job import Job, JobSpec
    from embedfleet.job.startup import describe_phases

    device = _bench_device(device)
    gpu = device.startswith("cuda")
    if replicas is None:
        replicas = _gpu_count() if gpu else 2
    if num_gpus is None:
        num_gpus = 1.0 if gpu else 0.0
    texts = corpus(docs)
    ef = DefaultEmbeddingFunction(device=device)
    source = str(ef.source.source)
    counts = ef.token_lengths(texts)
    limit = ef.max_tokens() or max(counts)
    tokens = sum(min(count, limit) for count in counts)
    rows: list[dict[str, Any]] = []

    start = time.perf_counter()
    baseline = SentenceTransformer(source, device=device)
    baseline.encode(texts[:32])
    cold = time.perf_counter() - start
    reference: list[Any] = []
    row = _timed(
        "sentence-transformers encode fp32",
        cold,
        docs,
        tokens,
        lambda: reference.append(baseline.encode(texts, batch_size=32, normalize_embeddings=True)),
        device,
    )
    row["padding_waste"] = _fixed_batch_padding(texts, [min(c, limit) for c in counts], 32)
    row["min_cosine_to_fp32"] = 1.0
    rows.append(row)
    fp32 = np.asarray(reference[0])

    rows.append(_function_row("embedfleet in-process", ef, texts, tokens, fp32, device))
    onnx = _onnx_default() if not gpu else None
    if onnx is not None:
        rows.append(_function_row("embedfleet in-process onnx", onnx, texts, tokens, fp32, device))

    chroma = _chroma_row(texts, tokens, fp32, device) if not gpu else None
    if chroma is not None:
        rows.append(chroma)

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "corpus.jsonl"
        data.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
        spec = JobSpec.from_dict(
            {
                "source": {"uri": str(data)},
                "embedding": {"provider": "default", "config": {"device": device}},
                "fleet": {  # the fleet's path, whatever the corpus size
                    "mode": "ray",
                    "replicas": replicas,
                    "num_cpus": num_cpus,
                    "num_gpus": num_gpus,
                },
                "output": {"uri": f"{folder}/out", "rows_per_shard": max(500, docs // 8)},
            }
        )
        with _PeakMemory(system=True) as memory:
            result = Job(spec).run(progress=False)
        table = pq.read_table(f"{folder}/out/snapshots/{result.run_id}")
        by_row = dict(zip(table["id"].to_pylist(), table["embedding"].to_pylist(), strict=True))
        job_vectors = np.asarray([by_row[id_] for id_ in _job_ids(data)])
        rows.append(
            {
                "path": f"full job ({replicas} replicas x {_share(num_cpus, num_gpus)})",
                "cold_start_s": result.startup_seconds,
                "finish_s": result.finish_seconds,
                "docs_per_s": result.steady_rows_per_second,
                "tokens_per_s": tokens * result.steady_rows_per_second / docs,
                "min_cosine_to_fp32": _min_cosine(job_vectors, fp32),
                "padding_waste": result.padded_tokens / max(1, result.model_tokens),
                "peak_memory_mb": memory.peak_mb,
                "memory_scope": "whole machine (driver + Ray + replicas)",
                "placement": result.placement,
                "startup_phases": result.startup_phases,
            }
        )

    base = rows[0]["docs_per_s"]
    for row in rows:
        row["ratio_to_encode"] = row["docs_per_s"] / base
    job_row, in_process = rows[-1], rows[1]
    job_row["ratio_to_in_process"] = job_row["docs_per_s"] / in_process["docs_per_s"]
    print(f"corpus: {docs} documents, {tokens} tokens ({tokens / docs:.1f} per document)")
    print(f"device: {_device_name(device)}; attention: {attention_implementation(ef.model)}")
    print(
        f"{'path':<40}{'cold s':>8}{'docs/s':>10}{'tokens/s':>11}{'x encode':>10}"
        f"{'min cos':>9}{'padding':>9}{'peak MB':>9}"
    )
    for row in rows:
        print(
            f"{row['path']:<40}{row['cold_start_s']:>8.1f}{row['docs_per_s']:>10.1f}"
            f"{row['tokens_per_s']:>11.0f}{row['ratio_to_encode']:>10.2f}"
            f"{row.get('min_cosine_to_fp32', float('nan')):>9.4f}"
            f"{row.get('padding_waste', float('nan')):>9.3f}"
            f"{row.get('peak_memory_mb', float('nan')):>9.0f}"
        )
    print(
        f"full job / in-process: {job_row['ratio_to_in_process']:.2f} "
        f"(job start-up {job_row['cold_start_s']:.1f} s and finish {job_row['finish_s']:.1f} s "
        "not counted)"
    )
    print(f"job start-up: {describe_phases(result.startup_phases)}")
    if gpu:
        pinned = [entry.get("cuda_visible_devices") for entry in job_row["placement"]]
        print(f"job replicas' CUDA_VISIBLE_DEVICES: {pinned}")
    if not gpu:
        _print_unmeasured(onnx=onnx is not None, chroma=chroma is not None)
    return rows


def _chroma_row(
    texts: list[str], tokens: int, fp32: np.ndarray, device: str
) -> dict[str, Any] | None:
    """Chroma's own default function on the corpus, where chromadb and its model files
    are here (None otherwise: the bench never downloads them)."""
    chroma = _chroma_default()
    if chroma is None:
        return None
    start = time.perf_counter()
    chroma(texts[:32])
    cold = time.perf_counter() - start
    outputs: list[Any] = []
    row = _timed(
        "chromadb DefaultEmbeddingFunction",
        cold,
        len(texts),
        tokens,
        lambda: outputs.append(np.asarray(chroma(texts))),
        device,
    )
    row["min_cosine_to_fp32"] = _min_cosine(outputs[0], fp32)
    row["padding_waste"] = _chroma_padding(texts)
    return row


def _print_unmeasured(*, onnx: bool, chroma: bool) -> None:
    """Say which optional CPU paths were left out, and why."""
    if not onnx:
        print('ONNX Runtime backend: not measured (pip install "embedfleet[onnx]")')
    if not chroma:
        print(
            "chromadb's DefaultEmbeddingFunction: not measured (chromadb is not installed, "
            "or its model is not in ONNXMiniLM_L6_V2.DOWNLOAD_PATH; the bench never "
            "downloads it)"
        )


def _function_row(
    label: str, ef: Any, texts: list[str], tokens: int, fp32: np.ndarray, device: str
) -> dict[str, Any]:
    """One embedfleet function: cold start (first batch), then a timed pass over ``texts``."""
    start = time.perf_counter()
    ef(texts[:32])
    cold = time.perf_counter() - start
    ef.stats.tokens = ef.stats.padded_tokens = 0
    produced: list[Any] = []
    row = _timed(
        f"{label} ({ef.precision})",
        cold,
        len(texts),
        tokens,
        lambda: produced.append(np.stack(ef(texts))),
        device,
    )
    row["padding_waste"] = ef.stats.padding_waste
    row["min_cosine_to_fp32"] = _min_cosine(produced[0], fp32)
    return row


def _timed(
    path: str, cold: float, docs: int, tokens: int, work: Any, device: str
) -> dict[str, Any]:
    gpu = device.startswith("cuda")
    if gpu:
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    with _PeakMemory() as memory:
        start = time.perf_counter()
        work()
        if gpu:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    row = {
        "path": path,
        "cold_start_s": cold,
        "docs_per_s": docs / seconds,
        "tokens_per_s": tokens / seconds,
        "peak_memory_mb": memory.peak_mb,
        "memory_scope": "this process, above its size before the pass",
    }
    if gpu:
        row["peak_gpu_memory_mb"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return row


def _bench_device(device: str) -> str:
    """``device`` resolved; a GPU asked for where none is visible is a clear error."""
    from embedfleet.embedding_functions.local.models import resolve_device
    from embedfleet.errors import ConfigError

    resolved = resolve_device(device)
    if resolved.startswith("cuda") and _gpu_count() == 0:
        raise ConfigError(f"bench device {device!r}: no CUDA GPU is visible to torch here")
    return resolved


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _device_name(device: str) -> str:
    if not device.startswith("cuda"):
        return device
    import torch

    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


def _share(num_cpus: float, num_gpus: float) -> str:
    """A replica's reservation, as the job row names it: "1 CPU", "1 GPU"."""
    return f"{num_gpus:g} GPU" if num_gpus else f"{num_cpus:g} CPU"


def _fixed_batch_padding(texts: list[str], counts: list[int], batch_size: int) -> float:
    """Padding of what ``encode`` runs: texts sorted by characters (longest first), cut
    into batches of ``batch_size``, each padded to its longest in tokens."""
    order = sorted(range(len(texts)), key=lambda index: -len(texts[index]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    padded = sum(len(batch) * max(counts[index] for index in batch) for batch in batches)
    return padded / sum(counts)


def _min_cosine(vectors: Any, reference: Any) -> float:
    a = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def _job_ids(data: Path) -> list[str]:
    """The ids a job derives for each line of ``data`` (path@byte-offset), in order."""
    ids, offset = [], 0
    with open(data, "rb") as handle:
        for line in handle:
            ids.append(f"{data.name}@{offset}")
            offset += len(line)
    return ids


def _onnx_default() -> Any:
    """The default model on ONNX Runtime (``precision="auto"``: int8 only where the quality
    guard holds), if onnx and onnxruntime are installed; the first run exports it."""
    from embedfleet.embedding_functions import DefaultEmbeddingFunction
    from embedfleet.embedding_functions.local.onnx_export import require_onnx
    from embedfleet.errors import MissingDependencyError

    try:
        require_onnx()
    except MissingDependencyError:
        return None
    return DefaultEmbeddingFunction(backend="onnx")


#: The files Chroma's ONNX default function checks for before it would download them.
CHROMA_MODEL_FILES = (
    "config.json",
    "model.onnx",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.txt",
)


def _chroma_model_dir() -> Path | None:
    """Where Chroma's ONNX default function keeps its model (``DOWNLOAD_PATH``, under the
    home directory unless changed), if chromadb is installed and every file is there:
    the bench never downloads it."""
    try:
        from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2
    except ImportError:
        return None
    folder = Path(ONNXMiniLM_L6_V2.DOWNLOAD_PATH) / ONNXMiniLM_L6_V2.EXTRACTED_FOLDER_NAME
    return folder if all((folder / name).is_file() for name in CHROMA_MODEL_FILES) else None


def _chroma_default() -> Any:
    """Chroma's own default function, if chromadb and its model files are already here."""
    if _chroma_model_dir() is None:
        return None
    from chromadb.utils.embedding_functions import DefaultEmbeddingFunction

    return DefaultEmbeddingFunction()


def _chroma_padding(texts: list[str]) -> float:
    """Padded tokens per real token of what Chroma runs: its tokenizer truncates every
    text to 256 tokens and pads every one to 256 (``enable_padding(length=256)``), in
    batches of 32 in input order, so each text costs 256 whatever its length."""
    from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

    encoded = ONNXMiniLM_L6_V2().tokenizer.encode_batch(texts)
    real = sum(sum(item.attention_mask) for item in encoded)
    return sum(len(item.ids) for item in encoded) / real


class _PeakMemory:
    """Peak resident memory while a block runs: this process above its size at the start,
    or (``system=True``) the whole machine's used memory above its level at the start."""

    def __init__(self, system: bool = False) -> None:
        self.system = system
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def _used(self) -> int:
        import psutil

        if self.system:
            return int(psutil.virtual_memory().used)
        return int(psutil.Process().memory_info().rss)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_mb = max(self.peak_mb, (self._used() - self._start) / 2**20)

    def __enter__(self) -> _PeakMemory:
        self._start = self._used()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, (self._used() - self._start) / 2**20)
