"""The GPU check (issue 30): the cases of docs/benchmarks.md "GPU check", one function each, in priority order.

    python -m bench.gpu.check --out DIR [--cpu] [--only 1,2] [--skip 7] [--budget 400]   (bench/gpu/run.sh wraps it)

Each case runs under its own time limit and appends one JSON line to DIR/gpu_report.jsonl as soon as it ends
(flushed: a run killed from outside keeps what finished); the markdown table goes to DIR/gpu_table.md and stdout
at the end. A case never stops the driver: it ends ok, fail (with an error string) or skip (with the reason).

`--cpu` is the dry run for a machine without a GPU: the same code paths at small sizes, CUDA-only parts skipped,
so that the one lent GPU run does not die on a typo. Written for torch 2.11 (the GPU machine) and 2.14 (here):
private or newer APIs are looked up with getattr and their absence is reported, not raised.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the project and tests/helpers (marian_tiny)


# --- the driver ---------------------------------------------------------------------------------------------
class Skip(Exception):
    """A case that does not apply here (no CUDA, a missing package or config): reported as skip."""


class CaseTimeout(Exception):
    pass


@dataclass
class Ctx:
    cpu: bool  # the dry run: small sizes, CUDA-only parts skipped
    device: torch.device
    out: Path  # report, table, log (what comes back from the GPU machine)
    work: Path  # run directories, generated data, subprocess logs (bulky; only their tails come back)
    data_dir: Path  # ZOO_DATA_DIR for the CLI runs
    log: Callable[[str], None]
    deadline: float = 0.0  # this case's end (time.monotonic()), for subprocesses to stay inside it
    failures: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)  # this case's CLI runs, killed when it ends

    def check(self, ok: bool, what: str) -> bool:
        """A soft assertion: the case goes on (to record every figure) and ends as fail."""
        if not ok:
            self.failures.append(what)
        return ok

    def left(self) -> float:
        """Seconds a subprocess may still take: 5 s before the case's alarm, so the wait ends first."""
        return max(1.0, self.deadline - time.monotonic() - 5.0)


CASES: list[tuple[int, str, float, Callable[[Ctx], dict[str, Any]]]] = []


def case(number: int, name: str, limit_s: float):
    """Register a case: its number (the priority order), its name and its time limit on the GPU machine."""
    def register(fn: Callable[[Ctx], dict[str, Any]]) -> Callable[[Ctx], dict[str, Any]]:
        CASES.append((number, name, limit_s, fn))
        return fn
    return register


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """SIGALRM raises CaseTimeout in the case's Python code (CUDA work is asynchronous: the next launch or
    sync sees it). Subprocesses get their own timeouts from Ctx.left()."""
    def expire(signum, frame):
        raise CaseTimeout(f"time limit of {seconds:.0f} s reached")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # NaN / inf as text: the line stays valid JSON
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return jsonable(value.item())
    return str(value)


def run_case(number: int, name: str, limit: float, fn: Callable[[Ctx], dict[str, Any]], ctx: Ctx,
             report: Any) -> dict[str, Any]:
    ctx.failures = []
    ctx.deadline = time.monotonic() + limit
    ctx.log(f"\n=== case {number}: {name} (limit {limit:.0f} s)")
    start = time.monotonic()
    figures: dict[str, Any] = {}
    status, error = "ok", None
    try:
        with time_limit(limit):
            figures = fn(ctx) or {}
        if ctx.failures:
            status, error = "fail", "; ".join(ctx.failures[:6]) + (f" (+{len(ctx.failures) - 6} more)"
                                                                   if len(ctx.failures) > 6 else "")
    except Skip as why:
        status, error = "skip", str(why)
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):
            raise
        status, error = "fail", f"{type(err).__name__}: {err}"[:500]
        ctx.log(traceback.format_exc())
        figures.setdefault("failures_before", ctx.failures[:6])
    finally:
        for proc in ctx.procs:  # their own sessions (for DDP's children): nothing would end them otherwise
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        ctx.procs = []
        if torch.cuda.is_available():
            try:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            except Exception as err:  # noqa: BLE001 - a sticky CUDA error: the next cases will say so too
                error = (error or "") + f" | CUDA after the case: {err}"
    seconds = round(time.monotonic() - start, 2)
    row = {"case": number, "name": name, "status": status, "seconds": seconds, "error": error,
           "figures": jsonable(figures)}
    report.write(json.dumps(row) + "\n")
    report.flush()
    os.fsync(report.fileno())
    ctx.log(f"--- case {number} {status} in {seconds} s" + (f": {error}" if error else ""))
    ctx.log(json.dumps(row["figures"])[:4000])
    return row


def cuda_usable() -> bool:
    try:
        (torch.ones(1, device="cuda") + 1).item()
        return True
    except Exception:  # noqa: BLE001 - any CUDA error here means the context is gone
        return False


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| # | case | status | s | key figures / error |", "|---|---|---|---|---|"]
    for r in rows:
        summary = r["figures"].get("summary", "") if isinstance(r["figures"], dict) else ""
        text = summary if r["status"] == "ok" else f"{r['error']}" + (f" ({summary})" if summary else "")
        text = str(text).replace("|", "/").replace("\n", " ")[:300]
        lines.append(f"| {r['case']} | {r['name']} | {r['status']} | {r['seconds']} | {text} |")
    return "\n".join(lines) + "\n"


def parse_numbers(text: str | None) -> set[int]:
    return {int(t) for t in text.split(",") if t.strip()} if text else set()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    p.add_argument("--report", type=Path, default=None, help="JSON-lines report (default OUT/gpu_report.jsonl)")
    p.add_argument("--work", type=Path, default=None, help="run directories etc. (default a temp dir)")
    p.add_argument("--data-dir", type=Path, default=None, help="ZOO_DATA_DIR for the CLI runs (default WORK/data)")
    p.add_argument("--cpu", action="store_true", help="dry run without a GPU: small sizes")
    p.add_argument("--only", default=None, help="comma-separated case numbers")
    p.add_argument("--skip", default=None, help="comma-separated case numbers")
    p.add_argument("--budget", type=float, default=400.0, help="seconds for all cases together")
    p.add_argument("--no-table", action="store_true", help=argparse.SUPPRESS)  # a re-started child's
    p.add_argument("--log", type=Path, default=None, help="also write the driver's own lines here "
                   "(run.sh tees the whole output to OUT/gpu_log.txt instead)")
    args = p.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir = args.data_dir or work / "data"
    log_file = open(args.log, "a", buffering=1) if args.log else None

    def log(text: str) -> None:
        print(text, flush=True)
        if log_file:
            log_file.write(text + "\n")

    if not args.cpu and not torch.cuda.is_available():
        log("No CUDA device: run with --cpu for the dry run.")
        return 2
    ctx = Ctx(cpu=args.cpu, device=torch.device("cpu" if args.cpu else "cuda"), out=args.out, work=work,
              data_dir=data_dir, log=log)
    only, skip = parse_numbers(args.only), parse_numbers(args.skip)
    report_path = args.report or args.out / "gpu_report.jsonl"
    rows: list[dict[str, Any]] = []
    start = time.monotonic()
    log(f"GPU check: {'CPU dry run' if args.cpu else 'CUDA'}, report {report_path}, work {work}, budget "
        f"{args.budget:.0f} s")
    todo = [c for c in sorted(CASES, key=lambda c: c[0]) if not (only and c[0] not in only) and c[0] not in skip]
    with open(report_path, "a") as report:
        for i, (number, name, limit, fn) in enumerate(todo):
            left = args.budget - (time.monotonic() - start)
            if left < 10:
                row = {"case": number, "name": name, "status": "skip", "seconds": 0.0,
                       "error": "no time left in the budget", "figures": {}}
                report.write(json.dumps(row) + "\n")
                report.flush()
                rows.append(row)
                continue
            rows.append(run_case(number, name, min(limit, left), fn, ctx, report))
            if i + 1 < len(todo) and not ctx.cpu and not cuda_usable():
                # A sticky CUDA error (an illegal address, say) poisons this process's context for good: the
                # remaining cases run in a fresh process, appending to the same report.
                rest = ",".join(str(c[0]) for c in todo[i + 1:])
                log(f"CUDA context unusable after case {number}: cases {rest} go on in a new process")
                child = [sys.executable, "-m", "bench.gpu.check", "--out", str(args.out), "--report", str(report_path),
                         "--work", str(work), "--data-dir", str(data_dir), "--only", rest,
                         "--budget", str(max(0.0, args.budget - (time.monotonic() - start))), "--no-table"] + \
                        (["--cpu"] if ctx.cpu else [])
                report.flush()
                before = len(report_path.read_text().splitlines())
                subprocess.run(child, cwd=ROOT)
                rows += [json.loads(line) for line in report_path.read_text().splitlines()[before:] if line.strip()]
                break
    if args.no_table:
        return 0
    text = table(rows)
    (args.out / "gpu_table.md").write_text(text)
    log("\n" + text)
    log(f"total {time.monotonic() - start:.1f} s")
    return 1 if any(r["status"] == "fail" for r in rows) else 0


# --- measuring helpers ---------------------------------------------------------------------------------------
def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN / inf anywhere gives inf (never passes a band)."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return math.inf
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    if not torch.isfinite(a).all():
        return -math.inf
    if a.norm() == 0 and b.norm() == 0:
        return 1.0
    return F.cosine_similarity(a, b, dim=0).item()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, reps: int
          ) -> dict[str, dict[str, float]]:
    """Round-robin timing of several contenders (start rotated each round): ms per call, median / p10 / p90.
    CUDA: one event pair per call, read after the last round (no host sync inside the timed loop)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    sync(device)
    samples: dict[str, list[Any]] = {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names):] + names[: r % len(names)]:
            if device.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fns[n]()
                b.record()
                samples[n].append((a, b))
            else:
                t = time.perf_counter()
                fns[n]()
                samples[n].append((time.perf_counter() - t) * 1e3)
    sync(device)
    result = {}
    for n, s in samples.items():
        rounds = [a.elapsed_time(b) for a, b in s] if device.type == "cuda" else s
        ms = sorted(rounds)
        result[n] = {"median_ms": statistics.median(ms), "p10_ms": ms[int(0.1 * (len(ms) - 1))],
                     "p90_ms": ms[int(0.9 * (len(ms) - 1))], "rounds_ms": rounds}
    return result


def peak_mib(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak allocated CUDA memory of one call, MiB above what was allocated before it (None on CPU)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


@contextmanager
def tf32_off() -> Iterator[None]:
    """fp32 checks against fp64 need true fp32 matmuls. The old flags still work on 2.11 and 2.14 (the newer
    fp32_precision API is only read here, for the report)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def sdp_backend_names() -> dict[int, str]:
    from torch.nn.attention import SDPBackend

    return {int(getattr(v, "value", v)): k for k, v in SDPBackend.__members__.items()}


def kernel_kind(name: str) -> str:
    """Which SDPA implementation a CUDA kernel name belongs to (None of these: other work)."""
    n = name.lower()
    if "flash" in n:
        return "FLASH"
    if "cudnn" in n or "fort_native_sdpa" in n:
        return "CUDNN"
    if "fmha" in n or "efficient" in n or "mem_eff" in n:
        return "EFFICIENT"
    if "softmax" in n:
        return "MATH?"  # bmm + softmax: the math backend (or the explicit kernel)
    return ""


def profiled_kernels(fn: Callable[[], Any], device: torch.device) -> list[str]:
    """Names of the CUDA kernels one call launches (empty on CPU)."""
    if device.type != "cuda":
        fn()
        return []
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = []
    for e in prof.events():
        dev = str(getattr(e, "device_type", ""))
        if "CUDA" in dev and e.name not in names:
            names.append(e.name)
    return names


def sdpa_kinds(names: list[str]) -> list[str]:
    return sorted({kernel_kind(n) for n in names} - {""})


_PORTS = iter(range(29611, 29700))


def run_cli(ctx: Ctx, name: str, args: list[str]) -> subprocess.Popen:
    """Start `python <args>` in the repository root, output to WORK/logs/<name>.log; see finish(). Each run
    gets its own MASTER_PORT: DDP / FSDP runs started together must not race for one free port."""
    logs = ctx.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ZOO_DATA_DIR": str(ctx.data_dir), "PYTHONUNBUFFERED": "1", "MASTER_PORT": str(next(_PORTS)),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1" if ctx.cpu else "4")}
    out = open(logs / f"{name}.log", "w")
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    proc.name, proc.log_path, proc.started = name, logs / f"{name}.log", time.monotonic()  # type: ignore[attr-defined]
    ctx.procs.append(proc)
    ctx.log(f"  started {name}: python {' '.join(args)}")
    return proc


def finish(ctx: Ctx, proc: subprocess.Popen) -> dict[str, Any]:
    """Wait (within the case's time) for a run_cli process: exit code, seconds, last error line, log tail."""
    try:
        rc = proc.wait(timeout=ctx.left())
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: DDP's children die with it
        proc.wait()
        rc = "timeout"
    text = proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line or "error:" in line]
    ctx.log(f"  {proc.name}: exit {rc}; log tail:\n    " + "\n    ".join(lines[-12:]))  # type: ignore[attr-defined]
    return {"rc": rc, "seconds": round(time.monotonic() - proc.started, 1),  # type: ignore[attr-defined]
            "last_error": errors[-1][-300:] if errors else (lines[-1][-300:] if lines and rc != 0 else None)}


def read_metrics(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finite_numbers(metrics: dict[str, Any]) -> bool:
    nums = [v for v in metrics.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return bool(nums) and all(math.isfinite(v) for v in nums)


# --- attention references ------------------------------------------------------------------------------------
def reference_attention(q, k, v, allowed):
    """softmax(Q K^T / sqrt(d)) V in float64, written out independently of the core; rows that see no key
    give 0. allowed: bool (True = attend) broadcastable to (B, H, T, S), or None."""
    q, k, v = q.double(), k.double(), v.double()
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -math.inf)
    p = torch.softmax(scores, -1)
    p = torch.nan_to_num(p, nan=0.0)  # a row with no visible key: all -inf -> NaN -> 0
    return p @ v


def band(T: int, S: int, window: int, causal: bool, num_global: int, q_offset: int, device) -> torch.Tensor:
    """(T, S) bool: |p - j| < window (causal: 0 <= p - j < window), plus the global rows / columns."""
    p = torch.arange(q_offset, q_offset + T, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    d = p - j
    allowed = (d < window) & ((d >= 0) if causal else (d > -window))
    if num_global:
        g = (p < num_global) | (j < num_global)
        allowed |= g & (d >= 0) if causal else g
    return allowed


@dataclass
class MaskCase:
    """One attention call of the core, in its kernel inputs: what `attend` / windowed_attention get."""

    name: str
    kv_heads: int = 4  # of 4 query heads
    q_len: str = "T"  # "T", or "prefix": 16 new queries after a cached prefix of S - 16 keys
    padding: bool = False
    causal: bool = False
    custom: bool = False
    window: int | None = None  # windowed_attention (blocked): W = T // 8
    num_global: int = 0


MASK_CASES = [
    MaskCase("none"), MaskCase("padding", padding=True), MaskCase("causal", causal=True),
    MaskCase("padding+causal", padding=True, causal=True), MaskCase("custom+padding", padding=True, custom=True),
    MaskCase("causal, cached prefix", q_len="prefix", causal=True),
    MaskCase("window causal G0", window=8, causal=True), MaskCase("window causal G1", window=8, causal=True, num_global=1),
    MaskCase("window bidir G0", window=8), MaskCase("window bidir G1", window=8, num_global=1),
    MaskCase("gqa kv1", kv_heads=1), MaskCase("gqa kv2", kv_heads=2),
    MaskCase("gqa kv1 padding", kv_heads=1, padding=True), MaskCase("gqa kv2 padding", kv_heads=2, padding=True),
]


def make_inputs(mc: MaskCase, T: int, hd: int, device, seed: int):
    """Fresh random q, k, v (float64), the key padding mask and the dense `allowed` of the reference."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, H, S = 2, 4, T
    Tq = 16 if mc.q_len == "prefix" else T
    q = torch.randn(B, H, Tq, hd, generator=g, dtype=torch.float64).to(device)
    k = torch.randn(B, mc.kv_heads, S, hd, generator=g, dtype=torch.float64).to(device)
    v = torch.randn(B, mc.kv_heads, S, hd, generator=g, dtype=torch.float64).to(device)
    pad = None
    if mc.padding:
        pad = torch.zeros(B, S, dtype=torch.bool)
        pad[1, S - S // 3:] = True  # the second sequence is a third shorter
        pad = pad.to(device)
    custom = (torch.rand(B, 1, Tq, S, generator=g) < 0.8).to(device) if mc.custom else None
    allowed = torch.ones(B, 1, Tq, S, dtype=torch.bool, device=device)
    if mc.window is not None:
        allowed &= band(Tq, S, T // mc.window, mc.causal, mc.num_global, 0, device)
    elif mc.causal:
        allowed &= band(Tq, S, S + 1, True, 0, S - Tq, device)  # a window wider than S: plain causal
    if pad is not None:
        allowed &= ~pad[:, None, None, :]
    if custom is not None:
        allowed &= custom
    return q, k, v, pad, custom, allowed


def core_call(mc: MaskCase, q, k, v, pad, custom, fused: bool):
    """The core's own call for this case, as MultiHeadAttention._plan would make it."""
    from models.attention import attend, build_mask, windowed_attention

    B, _, Tq, hd = q.shape
    S = k.shape[2]
    if mc.window is not None:
        out, _ = windowed_attention(q, k, v, window=S // mc.window, causal=mc.causal, num_global=mc.num_global,
                                    key_padding_mask=pad, dropout_p=0.0, fused=fused, scale=1 / math.sqrt(hd))
        return out
    is_causal = fused and mc.causal and Tq == S and pad is None and custom is None
    mask = None if is_causal else build_mask(B, Tq, S, key_padding_mask=pad, attn_mask=custom, causal=mc.causal,
                                             q_offset=S - Tq, device=q.device)
    out, _ = attend(q, k, v, mask, fused=fused, is_causal=is_causal)
    return out


def fwd_bwd(fn, q, k, v, dout, dtype):
    """out and (dq, dk, dv) of fn at `dtype`, inputs as leaves of that dtype."""
    qs, ks, vs = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    out = fn(qs, ks, vs)
    out.backward(dout.to(dtype))
    return out.detach(), (qs.grad, ks.grad, vs.grad)


# --- the cases -------------------------------------------------------------------------------------------------
@case(1, "environment", 30)
def environment(ctx: Ctx) -> dict[str, Any]:
    f: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0],
                         "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
                         "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    try:
        f["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None
    except Exception as err:  # noqa: BLE001
        f["nccl"] = f"unknown ({err})"
    b = torch.backends.cuda
    f["sdp_enabled"] = {n: getattr(b, f"{n}_sdp_enabled", lambda: "absent")()
                        for n in ("flash", "mem_efficient", "cudnn", "math")}
    f["tf32"] = {"matmul.allow_tf32": b.matmul.allow_tf32, "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                 "float32_matmul_precision": torch.get_float32_matmul_precision(),
                 "matmul.fp32_precision": getattr(b.matmul, "fp32_precision", "absent")}
    f["private_api"] = {"_fused_sdp_choice": hasattr(torch, "_fused_sdp_choice"),
                        "set_sync_debug_mode": hasattr(torch.cuda, "set_sync_debug_mode")}
    for mod in ("lightning", "torchmetrics", "timm", "transformers", "hydra", "omegaconf", "mlxtend", "babel",
                "soundfile", "sentencepiece", "sacrebleu"):
        try:
            m = __import__(mod)
            f.setdefault("packages", {})[mod] = getattr(m, "__version__", "?")
        except Exception as err:  # noqa: BLE001 - a missing wheel shows here first
            f.setdefault("packages", {})[mod] = f"MISSING ({type(err).__name__})"
            ctx.check(mod not in ("hydra", "omegaconf", "mlxtend", "babel", "lightning"), f"{mod} missing")
    if torch.cuda.is_available() and not ctx.cpu:
        p = torch.cuda.get_device_properties(0)
        f["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                    "memory_gib": round(p.total_memory / 2**30, 1)}
        try:
            f["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem,power.draw,temperature.gpu",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception as err:  # noqa: BLE001
            f["nvidia_smi"] = str(err)
    gpu = f.get("gpu", {}).get("name", "cpu")
    f["summary"] = (f"torch {f['torch']} CUDA {f['torch_cuda']} cuDNN {f['cudnn']} NCCL {f.get('nccl')} on {gpu}; "
                    f"sdp {f['sdp_enabled']}; tf32 matmul {f['tf32']['matmul.allow_tf32']}")
    return f


# Bands for ||out - ref|| / ||ref|| against float64 (the review's: fp32 << 1e-3, bf16 1e-3 to 1e-2). The
# explicit kernel gets twice the band: it rounds the scores and weights to the low precision, SDPA does not.
FWD_BAND = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}
DTYPE_NAME = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@case(2, "fused = explicit vs fp64", 75)
def fused_equals_explicit(ctx: Ctx) -> dict[str, Any]:
    if ctx.cpu:  # CPU SDPA has no fp16 backward worth testing, and the grid is the GPU's
        dtypes, head_dims, lengths = [torch.float32, torch.bfloat16], [16, 64], [64]
    else:
        dtypes, head_dims, lengths = [torch.float32, torch.bfloat16, torch.float16], [16, 24, 64, 128], [64, 192, 704]
    worst: dict[str, dict[str, float]] = {}
    n = 0
    with tf32_off():
        for T in lengths:
            for hd in head_dims:
                for mc in MASK_CASES:
                    q, k, v, pad, custom, allowed = make_inputs(mc, T, hd, ctx.device, seed=n)
                    dout = torch.randn(q.shape, dtype=torch.float64, device=ctx.device)
                    ref, ref_grads = fwd_bwd(lambda a, b, c: reference_attention(a, b, c, allowed),
                                             q, k, v, dout, torch.float64)
                    for dtype in dtypes:
                        n += 1
                        tag = f"{mc.name}/{DTYPE_NAME[dtype]}/hd{hd}/T{T}"
                        errs = {}
                        for fused in (True, False):
                            out, grads = fwd_bwd(lambda a, b, c: core_call(mc, a, b, c, pad, custom, fused),
                                                 q, k, v, dout, dtype)
                            kind = "fused" if fused else "explicit"
                            errs[kind] = rel_err(out, ref)
                            cos = min(cosine(g, r) for g, r in zip(grads, ref_grads))
                            finite = all(bool(torch.isfinite(g).all()) for g in grads)
                            ctx.check(finite, f"{tag} {kind}: non-finite grads")
                            ctx.check(cos >= 0.999, f"{tag} {kind}: grad cosine {cos:.5f}")
                            w = worst.setdefault(f"{kind}/{DTYPE_NAME[dtype]}", {"max_err": 0.0, "min_cos": 1.0})
                            w["max_err"] = max(w["max_err"], errs[kind])
                            w["min_cos"] = min(w["min_cos"], cos)
                            band_ = FWD_BAND[dtype] * (1 if fused else 2)
                            ctx.check(errs[kind] <= band_, f"{tag} {kind}: rel err {errs[kind]:.2e}")
                        if dtype != torch.float32:  # fused no worse than the explicit kernel at this precision
                            ctx.check(errs["fused"] <= 2 * errs["explicit"] + 1e-3,
                                      f"{tag}: fused err {errs['fused']:.2e} > 2 x explicit {errs['explicit']:.2e} + 1e-3")
    summary = ", ".join(f"{k} err {v['max_err']:.1e} cos {v['min_cos']:.5f}" for k, v in sorted(worst.items()))
    return {"items": n, "failed": len(ctx.failures), "worst": worst, "summary": f"{n} items, {len(ctx.failures)} "
            f"failed; {summary}", "failures": ctx.failures[:20]}


@case(3, "SDPA backend per mask", 30)
def sdpa_backends(ctx: Ctx) -> dict[str, Any]:
    from unittest import mock

    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = sdp_backend_names()
    choose = getattr(torch, "_fused_sdp_choice", None)
    original = F.scaled_dot_product_attention
    T, hd = (64, 16) if ctx.cpu else (192, 64)
    result: dict[str, Any] = {"_fused_sdp_choice": choose is not None}
    dtypes = [torch.bfloat16] if ctx.cpu else [torch.bfloat16, torch.float32]
    for dtype in dtypes:
        for mc in MASK_CASES:
            calls: list[dict[str, Any]] = []

            def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
                call = {}
                if choose is not None:
                    try:
                        c = choose(q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
                        call["choice"] = names.get(int(c), str(c))
                    except Exception as err:  # noqa: BLE001
                        call["choice"] = f"error: {type(err).__name__}"
                if not ctx.cpu:  # eligibility one backend at a time (RuntimeError: not eligible)
                    ok = []
                    for b in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
                        try:
                            with warnings.catch_warnings(), sdpa_kernel([getattr(SDPBackend, b)]):
                                warnings.simplefilter("ignore")
                                original(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                         enable_gqa=enable_gqa)
                            ok.append(b.split("_")[0])
                        except RuntimeError:
                            pass
                    call["eligible"] = ok
                call["shape"] = f"{tuple(q.shape)} mask={None if attn_mask is None else tuple(attn_mask.shape)} " \
                                f"causal={is_causal} gqa={enable_gqa}"
                calls.append(call)
                return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                                enable_gqa=enable_gqa)

            q, k, v, pad, custom, _ = make_inputs(mc, T, hd, ctx.device, seed=0)
            q, k, v = (t.to(dtype) for t in (q, k, v))
            with torch.no_grad(), mock.patch.object(F, "scaled_dot_product_attention", spy):
                core_call(mc, q, k, v, pad, custom, fused=True)
            with torch.no_grad():
                kernels = profiled_kernels(lambda: core_call(mc, q, k, v, pad, custom, fused=True), ctx.device)
            key = f"{mc.name}/{DTYPE_NAME[dtype]}"
            result[key] = {"calls": calls, "kernel_kinds": sdpa_kinds(kernels),
                           "kernels": [k_[:80] for k_ in kernels if kernel_kind(k_)][:6]}
            if not ctx.cpu and dtype == torch.bfloat16 and mc.name in ("none", "causal"):
                chosen = {c.get("choice") for c in calls}
                ctx.check("MATH" not in chosen and "MATH?" not in result[key]["kernel_kinds"],
                          f"{key} runs MATH ({chosen}, kernels {result[key]['kernel_kinds']})")
    by_choice: dict[str, list[str]] = {}  # backend -> the cases that chose it (any of their SDPA calls)
    for k, v in result.items():
        if isinstance(v, dict):
            for c in {c.get("choice", "?") for c in v["calls"]}:
                by_choice.setdefault(c.replace("_ATTENTION", ""), []).append(k)
    result["by_choice"] = by_choice
    result["summary"] = "; ".join(f"{c} ({len(ks)}): {', '.join(ks) if len(ks) <= 8 else 'the rest'}"
                                  for c, ks in sorted(by_choice.items(), key=lambda kv: len(kv[1])))
    return result


@case(4, "fully masked rows", 30)
def fully_masked_rows(ctx: Ctx) -> dict[str, Any]:
    from models.attention import MultiHeadAttention
    from models.tokenizer import PAD_ID
    from models.translator import Translator

    f: dict[str, Any] = {}
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for fused in (True, False):
            tag = f"{'fused' if fused else 'explicit'}/{DTYPE_NAME[dtype]}"
            m = MultiHeadAttention(32, 4, fused=fused).to(ctx.device, dtype)
            x = torch.randn(2, 8, 32, device=ctx.device, dtype=dtype, requires_grad=True)
            allowed = torch.ones(2, 1, 8, 8, dtype=torch.bool, device=ctx.device)
            allowed[0, 0, 2] = False  # query 2 of sample 0 sees nothing
            out = m(x, attn_mask=allowed)
            bias = m.proj.bias.detach()
            zero_row = (out[0, 2].detach() - bias).abs().max().item()  # attention output 0 -> only the bias
            out.float().pow(2).sum().backward()
            grads_ok = bool(torch.isfinite(x.grad).all()) and all(bool(torch.isfinite(p.grad).all())
                                                                  for p in m.parameters())
            f[tag] = {"masked_row_minus_bias": zero_row, "grads_finite": grads_ok}
            ctx.check(zero_row == 0.0, f"{tag}: masked row is not the bias ({zero_row:.2e})")
            ctx.check(grads_ok, f"{tag}: non-finite gradients")
    # A batch whose whole source is padding, through the Translator (encoder and cross-attention see nothing).
    net = Translator(23, dim=32, encoder_depth=1, decoder_depth=1, num_heads=4, max_len=16).to(ctx.device)
    src = torch.full((2, 6), PAD_ID, device=ctx.device)
    src[1, :3] = 5  # the second sentence is real
    tgt = torch.randint(4, 23, (2, 5), device=ctx.device)
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
        logits = net(src, tgt)
    logits.float().logsumexp(-1).sum().backward()
    finite = bool(torch.isfinite(logits).all()) and all(bool(torch.isfinite(p.grad).all())
                                                         for p in net.parameters() if p.grad is not None)
    f["translator_all_pad_source"] = {"finite": finite}
    ctx.check(finite, "translator with an all-padding source: non-finite logits or grads")
    f["summary"] = "; ".join(f"{k}: {'ok' if v.get('grads_finite', v.get('finite')) else 'BAD'}" for k, v in f.items())
    return f


def count_syncs(ctx: Ctx, fn: Callable[[], Any]) -> dict[str, Any]:
    """Host syncs of one call under torch.cuda.set_sync_debug_mode("warn"): count and the top source lines.
    On CPU the call runs without counting (the dry run checks the code path only)."""
    if ctx.cpu:
        fn()
        return {"syncs": None}
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    hits = [w for w in caught if "synchroniz" in str(w.message).lower()]
    where: dict[str, int] = {}
    for w in hits:
        key = f"{Path(w.filename).name}:{w.lineno}"
        where[key] = where.get(key, 0) + 1
    top = sorted(where.items(), key=lambda kv: -kv[1])[:8]
    return {"syncs": len(hits), "where": dict(top)}


def tiny_vit_module(compile: bool = False):
    from models.vit import VisionTransformer
    from training.classification import ClassificationModule

    net = VisionTransformer(img_size=28, patch_size=8, in_chans=1, num_classes=10, dim=96, depth=4, num_heads=4,
                            mlp_ratio=2.0, pool="mean", stem="conv")
    return ClassificationModule(net, 10, functools.partial(torch.optim.AdamW, lr=1e-3), compile=compile)


def tiny_translator(vocab: int = 64, **kw):
    from models.translator import Translator

    args = dict(dim=64, encoder_depth=2, decoder_depth=2, num_heads=4, max_len=64)
    return Translator(vocab, **{**args, **kw})


@case(5, "host-sync audit", 60)
def host_syncs(ctx: Ctx) -> dict[str, Any]:
    import lightning as L

    from models.tokenizer import PAD_ID
    from training.seq2seq import Seq2SeqModule
    from utils.faults import NonFiniteGuard

    dev = ctx.device
    f: dict[str, Any] = {}
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer warns once per key
        vit = tiny_vit_module().to(dev)
        x, y = torch.randn(64, 1, 28, 28, device=dev), torch.randint(0, 10, (64,), device=dev)
        vit.training_step((x, y), 0)  # warm-up: lazy inits are not the step's syncs
        f["vit_training_step+backward"] = count_syncs(ctx, lambda: vit.training_step((x, y), 0).backward())
        s2s = Seq2SeqModule(tiny_translator(), functools.partial(torch.optim.AdamW, lr=1e-3)).to(dev)
        batch = {"src": torch.randint(4, 64, (32, 20), device=dev), "tgt": torch.randint(4, 64, (32, 18), device=dev)}
        batch["src"][::2, 15:] = PAD_ID
        batch["tgt"][::3, 12:] = PAD_ID
        s2s.training_step(batch, 0)
        f["seq2seq_training_step+backward"] = count_syncs(ctx, lambda: s2s.training_step(batch, 0).backward())
        net = s2s.net.eval()
        src = batch["src"][:8]
        with torch.no_grad():
            net.greedy(src, 4)
            f["greedy_16_steps"] = count_syncs(ctx, lambda: net.greedy(src, 16, min_new_tokens=16))
            f["beam4_16_steps"] = count_syncs(ctx, lambda: net.beam_search(src, 4, 16, min_new_tokens=16,
                                                                            banned=(PAD_ID,)))

    # A Trainer step with the project's NonFiniteGuard; steps 1..3 counted (step 0 warms up).
    class Counter(L.Callback):
        def __init__(self):
            self.counts: list[dict[str, Any]] = []
            self.caught = None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx >= 1 and not ctx.cpu:
                torch.cuda.synchronize()
                self.caught = warnings.catch_warnings(record=True)
                self.records = self.caught.__enter__()
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if self.caught is not None:
                torch.cuda.set_sync_debug_mode(0)
                self.caught.__exit__(None, None, None)
                hits = [w for w in self.records if "synchroniz" in str(w.message).lower()]
                where: dict[str, int] = {}
                for w in hits:
                    where[f"{Path(w.filename).name}:{w.lineno}"] = where.get(f"{Path(w.filename).name}:{w.lineno}", 0) + 1
                self.counts.append({"syncs": len(hits), "where": dict(sorted(where.items(), key=lambda kv: -kv[1])[:8])})
                self.caught = None

    data = torch.utils.data.TensorDataset(torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,)))
    counter = Counter()
    trainer = L.Trainer(accelerator="cpu" if ctx.cpu else "gpu", devices=1,
                        precision="32-true" if ctx.cpu else "bf16-mixed", max_steps=4, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[NonFiniteGuard(), counter], default_root_dir=str(ctx.work / "sync_trainer"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(tiny_vit_module(), torch.utils.data.DataLoader(data, batch_size=64))
    f["trainer_step_vit_bf16"] = counter.counts
    per = {k: v.get("syncs") if isinstance(v, dict) else [c["syncs"] for c in v] for k, v in f.items()}
    f["summary"] = "; ".join(f"{k}: {v}" for k, v in per.items())
    return f


@case(6, "windowed attention, long context", 90)
def windowed_long(ctx: Ctx) -> dict[str, Any]:
    from models.attention import MultiHeadAttention

    dev = ctx.device
    dtype = torch.float32 if ctx.cpu else torch.bfloat16
    lengths = [512, 1024] if ctx.cpu else [8192, 32768, 131072]
    windows = [32] if ctx.cpu else [256, 1024]
    warmup, reps = (1, 2) if ctx.cpu else (3, 10)
    dim, heads = (64, 4) if ctx.cpu else (256, 4)
    f: dict[str, Any] = {"dtype": str(dtype), "dim": dim, "heads": heads}
    torch.manual_seed(0)

    def step(m, x):
        def run():
            x.grad = None
            m(x, causal=m.causal_flag).float().sum().backward()
        return run

    for N in lengths:
        x = torch.randn(1, N, dim, device=dev, dtype=dtype, requires_grad=True)
        for causal in (True, False):
            configs = [(W, G) for W in windows for G in (0, 1)] + [(None, 0)]  # None: dense SDPA, no mask
            for W, G in configs:
                key = f"N{N}/{'causal' if causal else 'bidir'}/" + (f"W{W}/G{G}" if W else "dense")
                m = MultiHeadAttention(dim, heads, window=W, num_global=G, fused=True).to(dev, dtype)
                m.causal_flag = causal
                try:
                    t = timed({"s": step(m, x)}, dev, warmup, reps)["s"]
                    mem = peak_mib(step(m, x), dev)
                    f[key] = {"ms": round(t["median_ms"], 3), "p10": round(t["p10_ms"], 3),
                              "p90": round(t["p90_ms"], 3), "peak_mib": None if mem is None else round(mem, 1)}
                except torch.OutOfMemoryError as err:
                    f[key] = {"error": f"OOM: {str(err)[:120]}"}
                    ctx.check(W is None, f"{key}: out of memory")
                if N == lengths[0] and W is not None:  # windowed == dense with the band mask at the shortest N
                    with torch.no_grad():
                        win = m(x, causal=causal)
                        dense = MultiHeadAttention(dim, heads, fused=True).to(dev, dtype)
                        dense.load_state_dict(m.state_dict())
                        allowed = band(N, N, W, causal, G, 0, dev)
                        ref = dense(x, attn_mask=allowed)
                    err = rel_err(win, ref)
                    f[key]["rel_err_vs_dense_band"] = err
                    ctx.check(err <= (1e-5 if dtype == torch.float32 else 2e-2), f"{key}: windowed vs dense {err:.2e}")
                del m
        del x
    if not ctx.cpu:  # peak memory should grow linearly in N for the windowed layer
        for W in windows:
            a, b = f.get(f"N32768/causal/W{W}/G0", {}), f.get(f"N131072/causal/W{W}/G0", {})
            if a.get("peak_mib") and b.get("peak_mib"):
                ratio = b["peak_mib"] / a["peak_mib"]
                f[f"peak_ratio_128K_over_32K_W{W}"] = ratio
                ctx.check(3.0 <= ratio <= 5.0, f"W{W}: peak memory 128K/32K = {ratio:.2f}, expected ~4")
        # The grid-limit case (P1-5): B * blocks = 65,536 at N=128K, W=8, B=4: runs, or fails clearly. In a
        # process of its own: a kernel launched past the grid limits may leave this one's CUDA context unusable.
        code = ("import torch; from models.attention import MultiHeadAttention; "
                "m = MultiHeadAttention(64, 4, window=8, fused=True).cuda().bfloat16(); "
                "x = torch.randn(4, 131072, 64, device='cuda', dtype=torch.bfloat16, requires_grad=True); "
                "m(x, causal=True).float().sum().backward(); torch.cuda.synchronize(); print('ran')")
        try:
            r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                               timeout=min(60.0, ctx.left()))
            lines = (r.stdout + r.stderr).strip().splitlines()
            f["grid_limit_N128K_W8_B4"] = "ran" if r.returncode == 0 else f"exit {r.returncode}: " + \
                (lines[-1][:200] if lines else "")
        except subprocess.TimeoutExpired:
            f["grid_limit_N128K_W8_B4"] = "timeout"
    short = [f"{k}: {v['ms']} ms {v['peak_mib']} MiB" for k, v in f.items()
             if isinstance(v, dict) and "ms" in v and ("G0" in k or "dense" in k) and "causal" in k]
    f["summary"] = "; ".join(short[:8])
    return f


@case(7, "default models through train.py / evaluate.py", 150)
def cli_runs(ctx: Ctx) -> dict[str, Any]:
    runs = ctx.work / "runs"
    common = ["trainer.max_epochs=1", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
    if ctx.cpu:  # a few batches, small eval: the dry run only proves the paths
        common += ["trainer=cpu", "trainer.limit_train_batches=2", "threads=1"]
        extra = {"translator": ["data.num_pairs=2000", "data.eval_batch_size=16", "model.max_new_tokens=8"]}
    else:
        common += ["trainer=gpu", "trainer.limit_train_batches=20"]
        extra = {}
    jobs = {"vit": ["model=vit"], "translator": ["model=translator", *extra.get("translator", [])],
            "video": ["model=video"], "vit_ckpt": ["model=vit", "model.grad_checkpointing=true"]}
    # All at once: the GPU is far from busy with these small models, and the budget is minutes.
    procs = {name: run_cli(ctx, f"train_{name}", ["train.py", *args, *common, f"hydra.run.dir={runs / name}"])
             for name, args in jobs.items()}
    f: dict[str, Any] = {}
    for name, proc in procs.items():
        r = finish(ctx, proc)
        metrics = read_metrics(runs / name / "metrics.json")
        r["metrics"] = metrics
        f[name] = r
        ctx.check(r["rc"] == 0, f"{name}: exit {r['rc']}: {r['last_error']}")
        ctx.check(metrics is not None and finite_numbers(metrics), f"{name}: metrics.json missing or not finite")
    f["audio"] = "skipped: its default data (keywords) needs espeak-ng, not on the GPU machine"
    if f["vit"]["rc"] == 0:
        trainer = ["trainer=cpu"] if ctx.cpu else ["trainer=gpu"]
        ev = finish(ctx, run_cli(ctx, "evaluate_vit", ["evaluate.py", f"ckpt_path={runs / 'vit'}", *trainer,
                                                       f"hydra.run.dir={runs / 'vit_eval'}"]))
        ev["metrics"] = read_metrics(runs / "vit_eval" / "metrics.json")
        f["evaluate_vit"] = ev
        ctx.check(ev["rc"] == 0 and ev["metrics"] is not None and finite_numbers(ev["metrics"]),
                  f"evaluate vit: exit {ev['rc']}: {ev['last_error']}")
    f["summary"] = "; ".join(
        f"{k}: rc {v['rc']} {v['seconds']} s " + ", ".join(f"{m}={x:.3g}" for m, x in (v.get("metrics") or {}).items()
                                                          if isinstance(x, (int, float)) and "acc" in m or m == "test/bleu")
        for k, v in f.items() if isinstance(v, dict))
    return f


@case(8, "ViT-S/16 step vs timm", 75)
def vit_vs_timm(ctx: Ctx) -> dict[str, Any]:
    from bench.bench_vit_timm import build_pair
    from training.switches import enable_grad_checkpointing

    dev = ctx.device
    if ctx.cpu:
        cfg = dict(img_size=32, in_chans=3, num_classes=10, patch_size=8, dim=64, depth=2, num_heads=2, mlp_ratio=4.0,
                   qkv_bias=True, pool="cls", batch=4)
        warmup, reps = 1, 3
    else:
        cfg = dict(img_size=224, in_chans=3, num_classes=1000, patch_size=16, dim=384, depth=12, num_heads=6,
                   mlp_ratio=4.0, qkv_bias=True, pool="cls", batch=256)
        warmup, reps = 10, 25
    ours, theirs = build_pair(cfg)
    ours_ckpt = copy.deepcopy(ours)
    enable_grad_checkpointing(ours_ckpt)
    models = {"ours": ours, "timm": theirs, "ours_ckpt": ours_ckpt}
    B = cfg["batch"]
    xs = [torch.randn(B, cfg["in_chans"], cfg["img_size"], cfg["img_size"], device=dev) for _ in range(3)]
    ys = [torch.randint(0, cfg["num_classes"], (B,), device=dev) for _ in range(3)]
    with torch.no_grad(), tf32_off():
        diff = (ours.to(dev)(xs[0][:4]) - theirs.to(dev)(xs[0][:4])).abs().max().item()
    ctx.check(diff < 1e-3, f"our ViT and timm's disagree by {diff:.2e}")

    def make_step(m):
        m.to(dev).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        i = [0]

        def run():  # rotate among 3 input sets (no L2-resident input)
            x, y = xs[i[0] % 3], ys[i[0] % 3]
            i[0] += 1
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    steps = {k: make_step(m) for k, m in models.items()}
    t = timed(steps, dev, warmup, reps)
    f: dict[str, Any] = {"batch": B, "max_abs_logit_diff": diff}
    for k in models:
        f[k] = {"img_per_s": round(B / t[k]["median_ms"] * 1e3, 1), "median_ms": round(t[k]["median_ms"], 3),
                "p10_ms": round(t[k]["p10_ms"], 3), "p90_ms": round(t[k]["p90_ms"], 3),
                "peak_mib": peak_mib(steps[k], dev)}
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
            f[k]["sdpa_kernels"] = sdpa_kinds(profiled_kernels(lambda m=models[k]: m(xs[0]), dev))
    # Throughput ratio per round (the two ran back to back), then the median and spread over rounds.
    ratios = sorted(a / b for a, b in zip(t["timm"]["rounds_ms"], t["ours"]["rounds_ms"]))
    f["ratio_ours_over_timm"] = statistics.median(ratios)
    f["ratio_p10_p90"] = [ratios[int(0.1 * (len(ratios) - 1))], ratios[int(0.9 * (len(ratios) - 1))]]
    f["ckpt_time_overhead"] = t["ours_ckpt"]["median_ms"] / t["ours"]["median_ms"]
    if f["ours"]["peak_mib"]:
        f["ckpt_memory_ratio"] = f["ours_ckpt"]["peak_mib"] / f["ours"]["peak_mib"]
    f["summary"] = (f"ours {f['ours']['img_per_s']} img/s, timm {f['timm']['img_per_s']} img/s, ratio "
                    f"{f['ratio_ours_over_timm']:.3f} (target >= 0.95); peak {f['ours']['peak_mib']} vs "
                    f"{f['timm']['peak_mib']} MiB; ckpt x{f['ckpt_time_overhead']:.2f} time, memory x"
                    f"{f.get('ckpt_memory_ratio', float('nan')):.2f}; sdpa {f['ours']['sdpa_kernels']} vs "
                    f"{f['timm']['sdpa_kernels']}")
    return f


@case(9, "Marian vs HF generate", 60)
def marian_vs_hf(ctx: Ctx) -> dict[str, Any]:
    try:
        import sentencepiece  # noqa: F401
        from transformers import MarianMTModel, MarianTokenizer
    except ImportError as err:
        raise Skip(f"needs sentencepiece / transformers: {err}") from None
    from helpers.marian_tiny import TEXT, make_tiny_marian
    from models.attention import fused_attn
    from models.pretrained.marian import load_marian

    dev = ctx.device
    f: dict[str, Any] = {}

    def build(folder: Path, **kw):
        make_tiny_marian(folder, **kw)
        net, _, _, settings = load_marian(str(folder))
        ref = MarianMTModel.from_pretrained(str(folder), attn_implementation="eager").eval()
        tok = MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json"))
        batch = {k: v.to(dev) for k, v in tok(TEXT, padding=True, return_tensors="pt").items()}
        return net.to(dev).eval(), ref.to(dev), settings, batch

    def trim(ids, pad):
        keep = ids.ne(pad).any(0).nonzero()
        return ids[:, : int(keep.max()) + 1] if len(keep) else ids[:, :0]

    with tf32_off(), torch.no_grad():
        net, ref, _, batch = build(ctx.work / "marian_logits", init_std=0.2)
        g = torch.Generator().manual_seed(0)
        tgt = torch.randint(2, net.vocab_size - 1, (len(TEXT), 9), generator=g).to(dev)
        tgt[:, 0] = net.bos_id
        for fused in (True, False):
            with fused_attn(fused):
                logits = net(batch["input_ids"], tgt)
            expected = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=tgt).logits
            d = (logits - expected).abs().max().item()
            f[f"max_logit_diff_{'fused' if fused else 'explicit'}"] = d
            ctx.check(d <= 1e-4, f"logits ({'fused' if fused else 'explicit'}) differ by {d:.2e} > 1e-4")
        net, ref, settings, batch = build(ctx.work / "marian_decoding", init_std=1.0, eos_bias=8.0)
        extra = dict(banned=tuple(settings["banned_tokens"]), forced_eos=True)
        greedy = net.greedy(batch["input_ids"], settings["max_new_tokens"], **extra)
        beam = net.beam_search(batch["input_ids"], 4, settings["max_new_tokens"], settings["length_penalty"],
                               length_norm="hf", renormalize=settings["renormalize_logits"], **extra)
        ref_greedy = ref.generate(**batch, num_beams=1)[:, 1:]
        ref_beam = ref.generate(**batch)[:, 1:]
        same_greedy = torch.equal(trim(greedy, net.pad_id), trim(ref_greedy, net.pad_id))
        same_beam = torch.equal(trim(beam, net.pad_id), trim(ref_beam, net.pad_id))
        ctx.check(same_greedy, "greedy tokens differ from generate")
        ctx.check(same_beam, "beam-4 tokens differ from generate")
        f.update(greedy_equal=same_greedy, beam_equal=same_beam, sentences=len(TEXT))
    f["opus_size_speed"] = "not run: bench/bench_text_pretrained.py has no --device option yet"
    f["summary"] = (f"logits diff fused {f['max_logit_diff_fused']:.1e} explicit {f['max_logit_diff_explicit']:.1e}; "
                    f"greedy equal {same_greedy}, beam-4 equal {same_beam} on {len(TEXT)} sentences")
    return f


@case(10, "KV cache and beam search on device", 45)
def kv_cache_and_beam(ctx: Ctx) -> dict[str, Any]:
    from models.attention import KVCache, MultiHeadAttention, fused_attn
    from models.tokenizer import EOS_ID, PAD_ID
    from helpers.beam import reference_beam

    dev = ctx.device
    f: dict[str, Any] = {}
    torch.manual_seed(0)
    with tf32_off(), torch.no_grad():
        # 1. MultiHeadAttention: step-by-step with caches == one causal pass (self GQA + cross with padding).
        for fused in (True, False):
            self_attn = MultiHeadAttention(32, 4, num_kv_heads=2, fused=fused).to(dev).eval()
            cross = MultiHeadAttention(32, 4, fused=fused).to(dev).eval()
            x, memory = torch.randn(2, 7, 32, device=dev), torch.randn(2, 5, 32, device=dev)
            mem_pad = torch.zeros(2, 5, dtype=torch.bool, device=dev)
            mem_pad[1, 3:] = True
            sc, cc = KVCache(), KVCache(static=True)
            steps_s = torch.cat([self_attn(x[:, t:t + 1], causal=True, cache=sc) for t in range(7)], 1)
            steps_c = torch.cat([cross(x[:, t:t + 1], memory if t == 0 else None, key_padding_mask=mem_pad, cache=cc)
                                 for t in range(7)], 1)
            e = max(rel_err(steps_s, self_attn(x, causal=True)), rel_err(steps_c, cross(x, memory, key_padding_mask=mem_pad)))
            f[f"mha_cache_rel_err_{'fused' if fused else 'explicit'}"] = e
            ctx.check(e <= 1e-5, f"MHA cache ({'fused' if fused else 'explicit'}): rel err {e:.2e}")
            # Rolling cache of a windowed layer == the uncached windowed pass.
            win = MultiHeadAttention(32, 4, num_kv_heads=2, window=5, fused=fused).to(dev).eval()
            x = torch.randn(2, 31, 32, device=dev)
            cache = KVCache()
            steps = [win(x[:, :12], causal=True, cache=cache)] + [win(x[:, t:t + 1], causal=True, cache=cache)
                                                                  for t in range(12, 31)]
            e = rel_err(torch.cat(steps, 1), win(x, causal=True))
            f[f"rolling_cache_rel_err_{'fused' if fused else 'explicit'}"] = e
            ctx.check(e <= 1e-5 and cache.length == 4, f"rolling cache: rel err {e:.2e}, {cache.length} keys held")
        # 2. Translator: cached == uncached logits and tokens (fp32), greedy and beam.
        model = tiny_translator(vocab=23, dim=32, max_len=32).to(dev).eval()
        g = torch.Generator().manual_seed(1)
        src = torch.randint(4, 23, (5, 7), generator=g).to(dev)
        src[1, 4:] = PAD_ID
        memory, pad = model.encode(src)
        prefix = torch.randint(4, 23, (5, 9), device=dev)
        caches = model.new_caches()
        steps = torch.cat([model.decode(prefix[:, t:t + 1], memory, pad, caches) for t in range(9)], 1)
        e = rel_err(steps, model.decode(prefix, memory, pad))
        f["translator_cached_logits_rel_err"] = e
        ctx.check(e <= 1e-5, f"translator cached logits: rel err {e:.2e}")
        for fused in (True, False):
            with fused_attn(fused):
                same = (torch.equal(model.greedy(src, 12), model.greedy(src, 12, use_cache=False))
                        and torch.equal(model.beam_search(src, 3, 12), model.beam_search(src, 3, 12, use_cache=False)))
            f[f"cached_tokens_equal_{'fused' if fused else 'explicit'}"] = same
            ctx.check(same, f"cached tokens differ ({'fused' if fused else 'explicit'})")
        # 3. Batched beam search == a plain one-sentence reference.
        small = tiny_translator(vocab=11, dim=32, max_len=32).to(dev).eval()
        small.head.weight[EOS_ID] += 0.05
        src11 = torch.randint(4, 11, (3, 7), generator=g).to(dev)
        src11[1, 4:] = PAD_ID
        got = small.beam_search(src11, beam_size=3, max_new_tokens=7, length_penalty=0.6)
        agree = 0
        for b in range(3):
            ref = reference_beam(small, src11[b][src11[b] != PAD_ID], k=3, steps=7, alpha=0.6)
            row = got[b].tolist()
            agree += row[: len(ref)] == ref[: len(row)] and all(t == PAD_ID for t in row[len(ref):])
        f["beam_vs_plain_reference"] = f"{agree}/3"
        ctx.check(agree == 3, f"batched beam search matches the plain reference on {agree}/3 sentences")
    # 4. bf16 autocast: cached and uncached logits within bf16 bands (tokens may differ: recorded only).
    if not ctx.cpu:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            caches = model.new_caches()
            steps = torch.cat([model.decode(prefix[:, t:t + 1], memory, pad, caches) for t in range(9)], 1)
            e = rel_err(steps.float(), model.decode(prefix, memory, pad).float())
            f["bf16_cached_logits_rel_err"] = e
            ctx.check(e <= 2e-2, f"bf16 cached logits: rel err {e:.2e}")
            f["bf16_cached_greedy_equal"] = torch.equal(model.greedy(src, 12), model.greedy(src, 12, use_cache=False))
    f["summary"] = ", ".join(f"{k}={v:.1e}" if isinstance(v, float) else f"{k}={v}" for k, v in f.items())
    return f


DDP_TINY = ["threads=1", "model.net.stem=patch", "model.net.depth=1", "model.net.dim=32", "trainer.max_epochs=2",
            "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
            "trainer.log_every_n_steps=1", "data.augment=false", "data.shuffle=false", "data.batch_size=32"]


@case(11, "DDP on 1 device", 75)
def ddp_one_device(ctx: Ctx) -> dict[str, Any]:
    runs = ctx.work / "ddp"
    accel = ["trainer.accelerator=cpu", "trainer.precision=32-true"] if ctx.cpu else \
        ["trainer.accelerator=gpu", "trainer.precision=bf16-mixed"]
    single = ["trainer=cpu"] if ctx.cpu else ["trainer=gpu"]
    tr = ["model=translator", "trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2",
          "trainer.limit_test_batches=2", "threads=1"] + (["data.num_pairs=2000", "data.eval_batch_size=16",
                                                          "model.max_new_tokens=8"] if ctx.cpu else [])
    jobs = {"vit_ddp": ["model=vit", *DDP_TINY, "trainer=ddp", "trainer.devices=1", *accel],
            "vit_single": ["model=vit", *DDP_TINY, *single, *accel[1:]],
            "translator_ddp": [*tr, "trainer=ddp", "trainer.devices=1", *accel]}
    procs = {k: run_cli(ctx, k, ["train.py", *a, f"hydra.run.dir={runs / k}"]) for k, a in jobs.items()}
    f: dict[str, Any] = {}
    for k, proc in procs.items():
        r = finish(ctx, proc)
        r["metrics"] = read_metrics(runs / k / "metrics.json")
        f[k] = r
        ctx.check(r["rc"] == 0 and r["metrics"] is not None, f"{k}: exit {r['rc']}: {r['last_error']}")
    a, b = (f["vit_ddp"].get("metrics") or {}), (f["vit_single"].get("metrics") or {})
    common = [m for m in a if m in b and isinstance(a[m], (int, float)) and "seconds" not in m]
    diffs = {m: abs(a[m] - b[m]) for m in common}
    f["ddp_minus_single"] = diffs
    # Recorded, not asserted: with devices=1 the two runs do not see the same batches. Lightning gives a DDP
    # training loader a shuffling DistributedSampler, and data/images.py keeps data.shuffle=false's fixed order
    # only when world_size > 1 (the CPU dry run shows the same gap). tests/test_distributed.py compares 2 ranks.
    f["ddp_equals_single"] = bool(diffs) and all(d <= 0.05 * max(1.0, abs(b[m])) for m, d in diffs.items())
    f["note"] = "1 GPU: NCCL init, DistributedSampler, sync_dist and the object collectives run with world size 1"
    f["summary"] = "; ".join(f"{k}: rc {v['rc']} {v['seconds']} s" for k, v in f.items()
                             if isinstance(v, dict) and "rc" in v) + f"; max |ddp - single| " \
                                                                     f"{max(diffs.values(), default=float('nan')):.3g}" \
                                                                     f" (recorded only: see ddp_equals_single)"
    return f


@case(12, "FSDP on 1 GPU", 75)
def fsdp_one_gpu(ctx: Ctx) -> dict[str, Any]:
    if ctx.cpu:
        raise Skip("FSDP needs CUDA")
    runs = ctx.work / "fsdp"
    base = ["model=vit", "trainer.devices=1", "model.net.depth=2", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
    jobs = {"fsdp": ["trainer=fsdp", *base], "fsdp_noclip": ["trainer=fsdp", *base, "trainer.gradient_clip_val=null"]}
    if (ROOT / "configs/trainer/fsdp2.yaml").exists():
        jobs["fsdp2"] = ["trainer=fsdp2", *base]
    procs = {k: run_cli(ctx, k, ["train.py", *a, f"hydra.run.dir={runs / k}"]) for k, a in jobs.items()}
    f: dict[str, Any] = {}
    for k, proc in procs.items():
        r = finish(ctx, proc)
        r["metrics"] = read_metrics(runs / k / "metrics.json")
        f[k] = r
    if f["fsdp"]["rc"] == 0 and (runs / "fsdp").is_dir():  # its full checkpoint must load in evaluate.py
        ev = finish(ctx, run_cli(ctx, "fsdp_eval", ["evaluate.py", f"ckpt_path={runs / 'fsdp'}", "trainer=gpu",
                                                    f"hydra.run.dir={runs / 'fsdp_eval'}"]))
        f["fsdp_evaluate"] = ev
    f["note"] = "1 GPU: FSDP runs NO_SHARD; sharding bugs (P0-2, P0-3) need >= 2 GPUs. Recorded, not asserted " \
                "(every run must exit 0 and write metrics.json)."
    f["summary"] = "; ".join(f"{k}: rc {v['rc']}" + (f" ({v['last_error'][:120]})" if v.get("last_error") else "")
                             for k, v in f.items() if isinstance(v, dict))
    return f


@case(13, "torch.compile", 90)
def compiled(ctx: Ctx) -> dict[str, Any]:
    from models.vit import VisionTransformer

    dev = ctx.device
    backend = "aot_eager" if ctx.cpu else "inductor"  # inductor on CPU would compile C++ for minutes
    torch.manual_seed(0)
    net = VisionTransformer(img_size=28, patch_size=8, in_chans=1, num_classes=10, dim=96, depth=4, num_heads=4,
                            mlp_ratio=2.0, pool="mean", stem="patch").to(dev)
    twin = copy.deepcopy(net)
    x, y = torch.randn(64, 1, 28, 28, device=dev), torch.randint(0, 10, (64,), device=dev)

    def loss_and_grads(m):
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(m(x), y)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten().float() for p in m.parameters()])

    eager_loss, eager_grads = loss_and_grads(net)
    start = time.monotonic()
    comp = torch.compile(twin, backend=backend)
    comp_loss, comp_grads = loss_and_grads(comp)
    compile_s = time.monotonic() - start
    rel = abs(comp_loss - eager_loss) / max(abs(eager_loss), 1e-12)
    cos = cosine(comp_grads, eager_grads)
    ctx.check(rel <= 1e-2, f"compiled loss {comp_loss:.5f} vs eager {eager_loss:.5f}")
    ctx.check(cos > 0.999, f"grad cosine {cos:.5f}")
    return {"backend": backend, "eager_loss": eager_loss, "compiled_loss": comp_loss, "rel_loss_diff": rel,
            "grad_cosine": cos, "first_call_s": round(compile_s, 1),
            "summary": f"{backend}: loss rel diff {rel:.1e}, grad cos {cos:.5f}, first call {compile_s:.1f} s"}


if __name__ == "__main__":
    sys.exit(main())
