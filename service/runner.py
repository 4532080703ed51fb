"""run_job(job_id): the one job runner every executor calls (embedded child, Dramatiq worker).

One attempt of one job:

1. claim the row (conditional update: lease + attempt counter); no claim -> return quietly, since
   someone else runs it, it is finished, cancelled or out of attempts;
2. load both datasets from the blobs;
3. run lipcore per the request (method, crosscheck, holdout, seed, config); progress goes to the
   store through the lipcore callback (throttled), and a background thread renews the lease every
   ``heartbeat_s`` so that a long exact solve or certification keeps it;
4. write the outcome with compare-and-set on (job id, attempt): ``succeeded`` with the result
   dict of the shared contract, ``cancelled``, or ``failed`` with ``{type, title, detail}``.

The same request gives the same result on every attempt: the seed is in the row.

Cancel and the job time-out reach the training loop through the callback (it raises
``lipcore.Cancelled``). Phases that cannot be interrupted in-process (the exact solver,
certification) are covered by the heartbeat thread: when a cancel has been pending for
``cancel_grace_s`` or the job ran past ``job_timeout_s``, it writes the outcome itself (same
compare-and-set), and the executor may then kill the process that is still computing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import lipcore
from lipcore.scaling import feature_scales, fold_scales
from service import policy
from service.blobs import BlobStore
from service.problems import JobError
from service.settings import Settings
from service.store import Database, DatasetRow, EstimateRow, JobStatus, jobs

log = logging.getLogger("lipwass.runner")

HISTORY_MAX = 2000  # points of the objective history kept in the row (downsampled beyond)


def default_owner() -> str:
    """A lease owner name unique to this process and call: host:pid:random."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _Flags:
    """State shared by the callback (training thread) and the heartbeat thread."""

    lost: bool = False  # the attempt is no longer ours (lease taken over, or finished elsewhere)
    cancel: bool = False  # cancel was requested in the store
    cancel_seen_at: float | None = None
    timed_out: bool = False
    ended: bool = False  # the heartbeat thread wrote the outcome itself


def _downsample(history: list[list[float]]) -> list[list[float]]:
    if len(history) <= HISTORY_MAX:
        return history
    stride = math.ceil(len(history) / HISTORY_MAX)
    out = history[::stride]
    if out[-1] is not history[-1]:
        out.append(history[-1])
    return out


class _Attempt:
    """One claimed attempt: heartbeats, progress, cancel and time-out, and the final write."""

    def __init__(self, settings: Settings, db: Database, claim: jobs.Claim) -> None:
        self.settings = settings
        self.db = db
        self.claim = claim
        self.flags = _Flags()
        self.lock = threading.Lock()  # serialises the final write against the heartbeat thread
        self.started = time.monotonic()
        self.history: list[list[float]] = []
        self.phase = ""
        self.last_progress = -math.inf
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat_loop, name=f"lipwass-heartbeat-{claim.job_id}", daemon=True
        )
        self.extra = {"job_id": claim.job_id, "attempt": claim.attempt}

    # -- heartbeat thread ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, self.settings.heartbeat_s))

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            try:
                self._beat_once()
            except Exception:
                log.exception("heartbeat failed", extra=self.extra)
            if self.flags.lost or self.flags.ended:
                return

    def _beat_once(self) -> None:
        ours, cancel = jobs.heartbeat(self.db, self.claim, self.settings.lease_s)
        self._note(ours, cancel)
        if not ours:
            return
        now = time.monotonic()
        grace = self.settings.cancel_grace_s
        if self.flags.cancel and self.flags.cancel_seen_at is not None:
            # Stuck in a phase the callback cannot interrupt: end the job ourselves.
            if now - self.flags.cancel_seen_at >= grace and self.finish(JobStatus.cancelled):
                log.info("cancelled while not interruptible", extra=self.extra)
        elif now - self.started > self.settings.job_timeout_s:
            self.flags.timed_out = True
            if now - self.started > self.settings.job_timeout_s + grace:
                err = _timeout_error(self.settings)
                if self.finish(JobStatus.failed, error=err.to_dict()):
                    self.flags.ended = True
                    log.warning("job timed out (not interruptible)", extra=self.extra)

    def _note(self, ours: bool, cancel: bool) -> None:
        if not ours:
            self.flags.lost = True
        if cancel and not self.flags.cancel:
            self.flags.cancel = True
            self.flags.cancel_seen_at = time.monotonic()

    # -- the lipcore callback ------------------------------------------------------------------
    def callback(self, p: lipcore.Progress) -> None:
        """Record progress (throttled into the store, a new phase at once); abort on cancel,
        loss or time-out."""
        if p.phase == "training":
            self.history.append([int(p.step), float(p.objective)])
        now = time.monotonic()
        new_phase = p.phase != self.phase
        if new_phase or now - self.last_progress >= self.settings.progress_interval_s:
            self.last_progress, self.phase = now, p.phase
            progress = {
                "step": int(p.step),
                "total_steps": int(p.total_steps),
                "objective": float(p.objective),
                "elapsed_s": float(p.elapsed_s),
                "phase": p.phase,
            }
            ours, cancel = jobs.heartbeat(
                self.db,
                self.claim,
                self.settings.lease_s,
                progress=progress,
                history=_downsample(self.history),
            )
            self._note(ours, cancel)
        if now - self.started > self.settings.job_timeout_s:
            self.flags.timed_out = True
        if self.flags.lost or self.flags.cancel or self.flags.timed_out or self.flags.ended:
            raise lipcore.Cancelled("job aborted")

    def check_between_phases(self) -> None:
        """Abort between phases (after the exact solve, before training) when asked to."""
        if now_exceeds(self.started, self.settings.job_timeout_s):
            self.flags.timed_out = True
        if self.flags.lost or self.flags.cancel or self.flags.timed_out or self.flags.ended:
            raise lipcore.Cancelled("job aborted")

    # -- the final write -----------------------------------------------------------------------
    def finish(
        self,
        status: JobStatus,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        """Compare-and-set the outcome once; False if this attempt is no longer current."""
        with self.lock:
            if self.flags.ended:
                return False
            ok = jobs.finish(
                self.db,
                self.claim,
                status,
                result=result,
                error=error,
                history=_downsample(self.history) if self.history else None,
            )
            if ok:
                self.flags.ended = True
            return ok


def now_exceeds(start: float, limit_s: float) -> bool:
    return time.monotonic() - start > limit_s


def _timeout_error(settings: Settings) -> JobError:
    return JobError(
        "timeout",
        f"the job exceeded the time limit of {settings.job_timeout_s:g} s (job_timeout_s)",
    )


def _load(db: Database, blobs: BlobStore, job_id: str) -> tuple[EstimateRow, dict[str, Any]]:
    """The job row and both datasets: {x, a, y, b}."""
    with db.session() as s:
        row = s.get(EstimateRow, job_id)
        if row is None:
            raise JobError("not_found", f"estimate {job_id} does not exist")
        src = s.get(DatasetRow, row.source_id)
        tgt = s.get(DatasetRow, row.target_id)
        s.expunge_all()
    data: dict[str, Any] = {}
    for key, ds, ref in (("x", src, row.source_id), ("y", tgt, row.target_id)):
        if ds is None or not blobs.has_dataset(ds.sha256):
            raise JobError("dataset_missing", f"dataset {ref} is no longer stored")
        samples, weights = blobs.load_dataset(ds.sha256, mmap=True)
        data[key] = samples
        data["a" if key == "x" else "b"] = weights
    assert src is not None
    data["names"] = src.columns  # the source's column names (None: rows stored without them)
    return row, data


def _compute(
    settings: Settings, blobs: BlobStore, row: EstimateRow, data: dict[str, Any], att: _Attempt
) -> dict[str, Any]:
    """Run lipcore per the request and the policy; the result dict of the shared contract."""
    t0 = time.perf_counter()
    x, y = data["x"], data["y"]
    (n, d), m = x.shape, y.shape[0]
    try:
        chosen = policy.plan(
            method=row.method,
            crosscheck=row.crosscheck,
            n=n,
            m=m,
            d=d,
            holdout=float(row.holdout),
            config=row.config,
            limits=policy.Limits.from_settings(settings),
        )
    except policy.PolicyError as exc:
        raise JobError(exc.code, str(exc)) from None
    fitted_result, fitted = compute(
        x,
        y,
        data["a"],
        data["b"],
        chosen,
        holdout=float(row.holdout),
        seed=int(row.seed),
        alpha=float(row.alpha),
        device=settings.device,
        exact_max_pairs=settings.exact_max_pairs,
        callback=att.callback,
        between_phases=att.check_between_phases,
        names=data.get("names"),
        scale=row.scale,
    )
    if fitted is not None:
        with blobs.temp_path(".safetensors") as tmp:
            fitted.save(tmp)
            blobs.put_file(tmp, blobs.potential_path(row.id))
        if not att.history:
            att.history = [[int(s), float(o)] for s, o in fitted.history]
    fitted_result["seconds"] = time.perf_counter() - t0
    return fitted_result


def compute(
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray | None,
    b: np.ndarray | None,
    chosen: policy.Plan,
    *,
    holdout: float,
    seed: int,
    alpha: float,
    device: str | None,
    exact_max_pairs: int,
    callback: Callable[[lipcore.Progress], None] | None = None,
    between_phases: Callable[[], None] = lambda: None,
    names: Sequence[str] | None = None,
    scale: str = "none",
) -> tuple[dict[str, Any], lipcore.Estimate | None]:
    """What a plan runs, in order: the potential (the answer), then the exact solver and its
    relabellings (the cross-check never holds the answer back). The result dict and the
    fitted estimate (None for method exact). The job runner and the in-process CLI share it."""
    t0 = time.perf_counter()
    a_n, b_n = lipcore.normalised_weights(a, x.shape[0]), lipcore.normalised_weights(b, y.shape[0])
    spread = feature_scales(x, y, a_n, b_n, "standardize")
    factors = None
    if scale != "none":  # every figure in the scaled units; the potential takes raw points
        factors = spread if scale == "standardize" else feature_scales(x, y, a_n, b_n, scale)
        x, y = np.asarray(x, np.float64) / factors, np.asarray(y, np.float64) / factors
    fitted = None
    if chosen.fits_potential:
        fitted = lipcore.estimate_w1(
            x,
            y,
            a,
            b,
            config=chosen.config,
            holdout=holdout,
            seed=seed,
            device=device,
            callback=callback,
        )
        between_phases()
        if factors is not None:
            fold_scales(fitted.potential, factors)
    exact, exact_test = None, None
    if chosen.run_exact:
        if callback is not None:
            steps, obj = (fitted.steps, fitted.objective) if fitted is not None else (0, 0.0)
            callback(lipcore.Progress(steps, steps, obj, time.perf_counter() - t0, "exact"))
        exact = solve_exact(x, y, a, b, exact_max_pairs)
        between_phases()
        if chosen.exact_permutations:
            exact_test = exact_relabelled(
                x, y, a, b, exact["value"], chosen.exact_permutations, seed, exact_max_pairs
            )
            between_phases()
    # The exact method has no potential: the marginals are defined, the shares are not.
    features = fitted.features if fitted is not None else lipcore.feature_table(None, x, y, a, b)
    if names is not None and len(names) == x.shape[1]:
        features = [dataclasses.replace(f, name=str(names[f.index])) for f in features]
    result = policy.result(
        chosen,
        exact=exact,
        fitted=fitted,
        seconds=time.perf_counter() - t0,
        alpha=alpha,
        exact_test=exact_test,
        features=features,
    )
    result["scale"] = {"mode": scale, "factors": None if factors is None else factors.tolist()}
    ratio = float(spread.max() / spread.min())
    if scale == "none" and ratio > UNITS_WARNING_RATIO:
        result["notes"].append(
            f"the features' standard deviations differ by {ratio:.3g}x: the Euclidean cost is "
            "dominated by the largest ones; if they are in different units, ask "
            'scale "standardize" (or "robust")'
        )
    return result, fitted


#: Feature spreads further apart than this get a note (the units may not be comparable).
UNITS_WARNING_RATIO = 100.0


def exact_relabelled(
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray | None,
    b: np.ndarray | None,
    observed: float,
    permutations: int,
    seed: int,
    max_pairs: int,
) -> lipcore.TwoSampleTest:
    """The exact W1 of relabelled samples (the plan says how many): a test, or a noise floor."""
    n, m = x.shape[0], y.shape[0]
    return lipcore.exact_permutation_test(
        x,
        y,
        lipcore.normalised_weights(a, n),
        lipcore.normalised_weights(b, m),
        observed,
        permutations,
        np.random.default_rng([int(seed), 0xE4AC7]),
        max_pairs,
    )


def solve_exact(
    x: np.ndarray, y: np.ndarray, a: np.ndarray | None, b: np.ndarray | None, max_pairs: int
) -> dict[str, Any]:
    """The result's ``exact`` member: POT (or the 1-D closed form), timed."""
    if x.shape[1] > 1:
        import ot  # noqa: F401 - import POT before timing the solve (its import is slow)
    t0 = time.perf_counter()
    value = lipcore.exact_w1(x, y, a, b, max_pairs=max_pairs)
    return policy.exact_field(value, x.shape[1], time.perf_counter() - t0)


def _non_finite(value: Any, path: str = "result") -> str | None:
    """The path of the first NaN or infinity in a JSON-like value (JSON cannot carry them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        for k, v in value.items():
            found = _non_finite(v, f"{path}.{k}")
            if found:
                return found
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _non_finite(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _classify(exc: BaseException) -> JobError:
    """An exception from lipcore or the runner as a clear ``{type, title, detail}``."""
    if isinstance(exc, JobError):
        return exc
    if isinstance(exc, lipcore.ExactTooLarge):
        return JobError("exact_too_large", str(exc))
    if isinstance(exc, lipcore.ExactNotConverged):
        return JobError("exact_not_converged", str(exc))
    if isinstance(exc, FloatingPointError):
        return JobError("diverged", str(exc))
    if isinstance(exc, ValueError):
        return JobError("invalid_input", str(exc))
    if isinstance(exc, MemoryError):
        return JobError(
            "out_of_memory",
            f"{str(exc) or 'MemoryError'} (this server caps a job at max_job_memory_bytes)",
        )
    name = type(exc).__name__
    if "OutOfMemory" in name:
        return JobError("out_of_memory", str(exc))
    if isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc):
        # torch's CPU allocator past the process's cap (service.memcap) or the machine's memory
        return JobError(
            "out_of_memory",
            f"{str(exc)[:300]} (this server caps a job at max_job_memory_bytes)",
        )
    return JobError("internal", f"{name}: {exc}")


def preload() -> None:
    """Pay a job's one-off start costs ahead, in a process that waits for its job: the imports
    (torch, lipcore, POT: seconds) and the first call of a training step and a certificate (lazy
    initialisation in torch and its BLAS), on a tiny problem on the CPU (no CUDA context is
    created for a process that may wait long). A failure here only loses the head start."""
    try:
        import ot  # noqa: F401 - POT's import takes seconds; a job solving exactly needs it

        g = np.random.default_rng(0)
        x, y = g.normal(size=(16, 2)), g.normal(size=(16, 2)) + 1.0
        config = {"width": 8, "depth": 1, "steps": 2, "batch_size": 8, "min_steps": 0}
        lipcore.estimate_w1(x, y, config=config, holdout=0.0, device="cpu")
    except Exception:
        log.exception("preloading the job code failed")


def run_job(
    job_id: str,
    settings: Settings,
    owner: str | None = None,
    *,
    db: Database | None = None,
    blobs: BlobStore | None = None,
) -> None:
    """Run one attempt of job ``job_id`` to its end and write the outcome (see module doc).

    ``db`` and ``blobs`` may be passed by a long-lived worker to reuse its connections; by
    default they are built from ``settings`` (and the engine disposed at the end).
    """
    own_db = db is None
    db = db or Database(settings.resolved_database_url)
    blobs = blobs or BlobStore(settings.data_dir / "blobs")
    owner = owner or default_owner()
    try:
        claim = jobs.claim(db, job_id, owner, settings.lease_s, settings.max_attempts)
        if claim is None:
            log.debug("not claimed (taken, finished or cancelled)", extra={"job_id": job_id})
            return
        _run_claimed(settings, db, blobs, claim)
    finally:
        if own_db:
            db.dispose()


def _run_claimed(settings: Settings, db: Database, blobs: BlobStore, claim: jobs.Claim) -> None:
    att = _Attempt(settings, db, claim)
    extra = att.extra
    log.info("job started", extra=extra)
    att.start()
    t0 = time.perf_counter()
    try:
        try:
            row, data = _load(db, blobs, claim.job_id)
            extra = {**extra, "method": row.method}
            result = _compute(settings, blobs, row, data, att)
            bad = _non_finite(result)
            if bad:
                raise JobError(
                    "non_finite", f"{bad} is not finite; check the inputs' scale or lower config.lr"
                )
        except lipcore.Cancelled:
            if att.flags.lost:
                log.warning("attempt lost its lease: abandoned", extra=extra)
            elif att.flags.cancel:
                if att.finish(JobStatus.cancelled):
                    log.info("job cancelled", extra=extra)
            elif att.flags.timed_out:
                att.finish(JobStatus.failed, error=_timeout_error(settings).to_dict())
                log.warning("job timed out", extra=extra)
            return
        except Exception as exc:
            err = _classify(exc)
            if err.type == "internal":
                log.exception("job failed unexpectedly", extra=extra)
            else:
                log.warning("job failed: %s", err.detail, extra=extra)
            if not att.finish(JobStatus.failed, error=err.to_dict()):
                log.warning("failure not recorded: attempt no longer current", extra=extra)
            return
        try:
            written = att.finish(JobStatus.succeeded, result=result)
        except Exception as exc:
            log.exception("writing the result failed", extra=extra)
            err = JobError("internal", f"the result could not be stored: {type(exc).__name__}")
            try:
                att.finish(JobStatus.failed, error=err.to_dict())
            except Exception:
                log.exception("writing the failure failed too", extra=extra)
            return
        if written:
            log.info(
                "job succeeded",
                extra={**extra, "status": "succeeded", "seconds": time.perf_counter() - t0},
            )
        else:
            log.warning("result not recorded: attempt no longer current", extra=extra)
    finally:
        att.stop()
