"""Decision agreement of each embedding backend with torch fp32, and the recorded ``auto`` choice.

A faster backend is only worth having if refine's decisions do not change. So agreement is
measured on decisions, not just on vectors: on the same texts, each backend's vectors go
through the greedy semantic dedup (input order, ``dedup.threshold``) and the contamination
test (best match >= ``contamination.threshold``; with no benchmark at hand, each row's
nearest other row stands in for its best benchmark match), and the rows whose outcome
differs from torch fp32's are counted.

``embedding.backend: auto`` picks the fastest backend among torch, ONNX and OpenVINO whose
decisions are identical to torch fp32's on a sample of the run's own texts, timed on this
machine with an actor's thread count. The result is written to
``<export folder>/calibration-<machine>-...json`` and reused by later runs on the same machine,
library versions and thresholds, unless a run has more rows than the recorded sample and the
sample was smaller than ``embedding.calibration_rows``. A run smaller than
``calibration_rows`` never calibrates (it would cost more than it saves): it uses the record
if there is one, else torch. int8 and static are never chosen by ``auto``; choosing them
explicitly measures their agreement the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from platypus_ray.devtools.dedup_reference import greedy_reference
from platypus_ray.embedding.encoders import EXACT, EncoderSpec, load_encoder


@dataclass
class Agreement:
    """One backend against the torch fp32 reference on the same texts."""

    name: str
    version: str
    rows: int
    rows_per_s: float
    ratio_vs_torch: float
    max_abs_cos_diff: float
    kept_differs: int
    flags_differ: int

    @property
    def identical(self) -> bool:
        return self.kept_differs == 0 and self.flags_differ == 0


def decisions(
    rows: np.ndarray, probes: np.ndarray | None, dedup_t: float, flag_t: float
) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask of the greedy dedup in input order, flag mask) computed in float64: the brute-force
    rule (:mod:`platypus_ray.devtools.dedup_reference`), which refine's dedup equals on every row (its tests)."""
    v = np.asarray(rows, dtype=np.float64)
    keep = greedy_reference(v, np.arange(len(v)), dedup_t)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    if probes is not None and len(probes):
        best = (v @ np.asarray(probes, dtype=np.float64).T).max(axis=1)
    else:
        best = sims.max(axis=1, initial=-1.0)
    return keep, best >= flag_t


def compare(
    ref: np.ndarray,
    vec: np.ndarray,
    dedup_t: float,
    flag_t: float,
    ref_probes: np.ndarray | None = None,
    vec_probes: np.ndarray | None = None,
) -> tuple[float, int, int]:
    """(max |cosine difference| over all row pairs and row-probe pairs, kept_differs, flags_differ)."""
    diff = float(np.abs(ref @ ref.T - vec @ vec.T).max()) if len(ref) else 0.0
    if ref_probes is not None and len(ref_probes):
        if vec_probes is None:
            raise ValueError("compare: probes for the reference vectors but none for the compared ones")
        diff = max(diff, float(np.abs(ref @ ref_probes.T - vec @ vec_probes.T).max()))
    keep_a, flag_a = decisions(ref, ref_probes, dedup_t, flag_t)
    keep_b, flag_b = decisions(vec, vec_probes, dedup_t, flag_t)
    return round(diff, 6), int((keep_a != keep_b).sum()), int((flag_a != flag_b).sum())


def timed_encode(spec: EncoderSpec, texts: list[str]) -> tuple[float, np.ndarray, str]:
    """(encode seconds after load and a warm-up batch, unit vectors, runtime version)."""
    encoder = load_encoder(spec)
    encoder.encode(texts[: min(len(texts), 16)])
    start = time.perf_counter()
    vectors = encoder.encode(texts)
    return time.perf_counter() - start, vectors, encoder.version


def calibrate(
    texts: list[str], base: EncoderSpec, dedup_t: float, flag_t: float, backends: tuple[str, ...] = EXACT
) -> list[Agreement]:
    """Time every backend on ``texts`` and compare its decisions with torch fp32 (first entry)."""
    from dataclasses import replace

    results: list[Agreement] = []
    ref_s, ref, _ = None, None, None
    for name in ("torch", *[b for b in backends if b != "torch"]):
        spec = replace(base, backend=name, precision="float32")
        seconds, vectors, version = timed_encode(spec, texts)
        if ref is None or ref_s is None:  # the first backend (torch fp32) is the reference; both set together
            ref_s, ref = seconds, vectors
        diff, kept, flags = compare(ref, vectors, dedup_t, flag_t)
        results.append(
            Agreement(
                name, version, len(texts), round(len(texts) / seconds, 1), round(ref_s / seconds, 2), diff, kept, flags
            )
        )
    return results


def _calibrate_off_driver(
    texts: list[str],
    base: EncoderSpec,
    dedup_t: float,
    flag_t: float,
    backends: tuple[str, ...],
    timeout_s: float = 3600.0,
) -> list[Agreement]:
    """:func:`calibrate` in a Ray task when Ray is up (refine), so the models it loads (torch and
    every backend) never enter the driver's memory; in this process otherwise."""
    import ray

    if not ray.is_initialized():
        return calibrate(texts, base, dedup_t, flag_t, backends)
    from platypus_ray.core.waits import bounded_by, wait_all

    task = ray.remote(num_cpus=max(1, base.threads))(calibrate)
    ref = task.remote(texts, base, dedup_t, flag_t, backends)  # type: ignore[call-arg]  # Ray stubs drop defaulted args
    fix = "the cluster may lack a free CPU, or set embedding.backend to a named backend to skip it"
    with bounded_by("embedding.timeout_s", "embedding calibration task", fix):
        (agreements,) = wait_all([ref], timeout_s)
    return agreements


def choose(results: list[Agreement]) -> Agreement:
    """The fastest backend whose decisions are identical to torch fp32 (torch itself always is)."""
    return max((r for r in results if r.identical), key=lambda r: r.rows_per_s)


def recorded_choice(
    sample: Callable[[int], list[str]],
    total: int,
    base: EncoderSpec,
    dedup_t: float,
    flag_t: float,
    wanted_rows: int,
    backends: tuple[str, ...],
    record_dir: Path,
    measure_small: bool = True,
) -> dict | None:
    """The calibration record of ``backends`` on this machine, measuring it first (on ``sample(k)``,
    k of the run's ``total`` texts) when missing or smaller than this run allows. With
    ``measure_small`` false, a run with fewer than ``wanted_rows`` texts uses an existing record
    or none (calibrating would cost more than the whole run)."""
    path = record_dir / f"calibration-{_machine_key(base)}-{'+'.join(backends)}-{dedup_t}-{flag_t}.json"
    record = json.loads(path.read_text()) if path.is_file() else None
    if record is not None and (record["rows"] >= min(total, wanted_rows) or not measure_small):
        return record | {"reused": True}
    if total < wanted_rows and not measure_small:
        return None
    texts = sample(wanted_rows)
    results = _calibrate_off_driver(texts, base, dedup_t, flag_t, backends)
    record = {
        "chosen": choose(results).name,
        "rows": len(texts),
        "dedup_threshold": dedup_t,
        "flag_threshold": flag_t,
        "threads": base.threads,
        "machine": _machine(),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backends": [asdict(r) for r in results],
    }
    record_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    return record | {"reused": False}


def spread(texts: list[str]) -> Callable[[int], list[str]]:
    """A sampler over an in-memory list (tests, benchmarks): ``k`` texts evenly spread over it."""
    return lambda k: list(texts) if len(texts) <= k else [texts[int(i)] for i in np.linspace(0, len(texts) - 1, k)]


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.system()}


def _machine_key(base: EncoderSpec) -> str:
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    for package in ("torch", "onnxruntime", "openvino", "sentence-transformers"):
        try:
            versions.append(version(package))
        except PackageNotFoundError:
            versions.append("-")
    from platypus_ray.embedding.manifest import RECIPES

    key = json.dumps([_machine(), base.threads, base.batch_size, base.batch_tokens, versions, RECIPES], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def report_html(embedding: dict | None) -> list[str]:
    """report.html section: the backend, its labels, and the agreement table next to its thresholds."""
    import html

    if not embedding:
        return []
    out = ["<h2>Embedding backend</h2>"]
    if embedding.get("cache"):
        out.append(
            f"<p>{embedding['from_cache']} vectors read from the embedding cache, {embedding['computed']} computed "
            f"(cache <code>{html.escape(embedding['cache'])}</code>).</p>"
        )
    if not embedding.get("backend"):
        return out
    out += [
        f"<p><b>{html.escape(embedding['backend'])}</b> ({html.escape(embedding['version'])}), requested "
        f"{html.escape(embedding['requested'])}{' &mdash; <b>APPROXIMATE</b>' if embedding['approximate'] else ''}</p>",
        *(f"<p>{html.escape(note)}</p>" for note in embedding["notes"]),
    ]
    record = embedding.get("calibration")
    if record:
        head = ["backend", "version", "rows/s", "x torch", "max |cos diff|", "kept differs", "flags differ"]
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(b[k]))}</td>"
                for k in (
                    "name",
                    "version",
                    "rows_per_s",
                    "ratio_vs_torch",
                    "max_abs_cos_diff",
                    "kept_differs",
                    "flags_differ",
                )
            )
            + "</tr>"
            for b in record["backends"]
        )
        out += [
            f"<p>Agreement with torch fp32 on {record['rows']} of this corpus' texts "
            f"({'recorded ' + record['measured'] if record.get('reused') else 'measured in this run'}), decisions at "
            f"dedup threshold {record['dedup_threshold']} and contamination threshold {record['flag_threshold']}:</p>",
            "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{rows}</table>",
        ]
    return out
