"""`lipwass`: serve the API, estimate or solve exactly from files, migrate, run a worker.

    lipwass serve [--host 127.0.0.1] [--port 8000] [--data-dir ./lipwass-data] [--insecure]
    lipwass estimate X Y [--server URL] [--method auto|lipschitz|exact] [--steps N] [--json]
                         [--weights COL] [--columns A,B] [--exclude C] [--header auto|true|false]
                         [--delimiter D]
    lipwass exact X Y [--json] [the same column flags]
    lipwass migrate
    lipwass worker [--gpu N] [--check]
    lipwass keys create --tenant T [--scopes read,write,admin] | keys list | keys revoke ID

X and Y are files in any upload format (.npy, .csv, .tsv, .json, .arrow, .parquet), read with
the same column and weight flags as an upload (nothing implicit). Without ``--server`` (or
``LIPWASS_SERVER``) ``estimate`` runs in this process: lipcore directly, plus the exact
cross-check when the inputs are small, with the same result fields as the service.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

if TYPE_CHECKING:  # the CLI imports torch only for the commands that compute
    import lipcore

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# -- reading files ----------------------------------------------------------------------------
def load_dataset(
    path: str | os.PathLike, settings: Any = None, options: Any = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples and normalised weights (None: uniform) of a file, parsed and validated exactly
    as an upload of it would be (service.ingest): the CLI accepts exactly the upload formats."""
    samples, weights, _ = load_table(path, settings, options)
    return samples, weights


def load_table(
    path: str | os.PathLike, settings: Any = None, options: Any = None
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """:func:`load_dataset` and the column names; ``options``: an ``ingest.Options``."""
    from service import ingest
    from service.client import CONTENT_TYPES
    from service.settings import Settings

    settings = settings or Settings()
    p = Path(path)
    ctype = CONTENT_TYPES.get(p.suffix.lower())
    if ctype is None:
        raise ValueError(
            f"{p}: unknown file type {p.suffix!r}; use one of {', '.join(sorted(CONTENT_TYPES))}"
        )
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    limits = ingest.Limits(
        max_n=settings.max_n,
        max_d=settings.max_d,
        max_npy_header_bytes=settings.max_npy_header_bytes,
    )
    with tempfile.TemporaryDirectory(prefix="lipwass-") as tmp:
        out = Path(tmp) / "canonical.npy"
        try:
            got = ingest.ingest(p, ingest.format_for(ctype), limits, out, options=options)
        except ingest.IngestError as exc:
            raise ValueError(f"{p}: {exc.detail}") from None
        samples = np.load(got.samples_file, allow_pickle=False)
    return samples, got.weights, got.columns


def _options(args: argparse.Namespace) -> Any:
    """The column and weight flags as ingest options (a ValueError names a bad flag)."""
    from service import ingest

    try:
        return ingest.Options.from_query(
            weights=args.weights,
            columns=args.columns,
            exclude=args.exclude,
            header=args.header,
            delimiter=args.delimiter,
        )
    except ingest.IngestError as exc:
        flag = exc.detail.replace("?", "--").replace("=", " ", 1)
        raise ValueError(flag) from None


def _load_pair(
    args: argparse.Namespace, settings: Any
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """X and Y read with the same flags; their columns must agree (count, and names when
    both files name them)."""
    options = _options(args)
    x, a, cx = load_table(args.x, settings, options)
    y, b, cy = load_table(args.y, settings, options)
    named = [cols != [f"x{j}" for j in range(len(cols))] for cols in (cx, cy)]
    if x.shape[1] != y.shape[1] or (all(named) and cx != cy):
        raise ValueError(
            f"X has d={x.shape[1]} columns {cx} and Y has d={y.shape[1]} columns {cy}: they "
            "must be the same (pick them with --columns or --exclude)"
        )
    return x, a, y, b


# -- progress ---------------------------------------------------------------------------------
class ProgressBar:
    """A one-line progress bar on a terminal (a line per 10 % elsewhere), for both the local
    estimator's ``Progress`` objects and the service's progress dicts."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last_decile = -1
        self.shown = False
        self.phase = "training"

    def __call__(self, p: Any) -> None:
        get = p.get if isinstance(p, dict) else lambda k, _d=None: getattr(p, k, _d)
        step, total = int(get("step", 0) or 0), int(get("total_steps", 0) or 0)
        objective, elapsed = get("objective"), float(get("elapsed_s", 0.0) or 0.0)
        phase = str(get("phase", "training") or "training")
        frac = min(step / total, 1.0) if total > 0 else 0.0
        obj = f"{objective:.5g}" if isinstance(objective, int | float) else "-"
        text = f"step {step}/{total}  objective {obj}  {elapsed:.1f}s"
        if phase != "training":
            text = f"{phase}...  (trained: {step} steps)  {elapsed:.1f}s"
            if not self.tty and phase != self.phase:
                self.phase = phase
                self.stream.write(f"     {text}\n")
                self.stream.flush()
                return
        self.phase = phase
        if self.tty:
            done = int(round(frac * self.width))
            bar = "#" * done + "-" * (self.width - done)
            self.stream.write(f"\r[{bar}] {100 * frac:3.0f}%  {text}\x1b[K")
            self.stream.flush()
            self.shown = True
        else:
            decile = int(frac * 10)
            if decile > self.last_decile:
                self.last_decile = decile
                self.stream.write(f"{100 * frac:3.0f}%  {text}\n")
                self.stream.flush()

    def close(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


# -- the in-process estimate ------------------------------------------------------------------
def estimate_local(
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray | None = None,
    b: np.ndarray | None = None,
    *,
    method: str = "auto",
    crosscheck: str = "auto",
    holdout: float = 0.2,
    alpha: float = 0.05,
    scale: str = "none",
    seed: int = 0,
    config: dict[str, Any] | None = None,
    device: str | None = None,
    exact_max_pairs: int = 25_000_000,
    callback: Callable[[lipcore.Progress], None] | None = None,
) -> tuple[dict[str, Any], lipcore.Estimate | None]:
    """The service's result contract computed in this process; returns (result, Estimate|None).

    The same decision and the same pipeline as the service's (service.policy, runner.compute),
    with no server limits but ``exact_max_pairs``.
    """
    from service import policy, runner

    chosen = policy.plan(
        method=method,
        crosscheck=crosscheck,
        n=x.shape[0],
        m=y.shape[0],
        d=x.shape[1],
        holdout=holdout,
        config=config,
        limits=policy.Limits(exact_max_pairs=exact_max_pairs),
    )
    return runner.compute(
        x,
        y,
        a,
        b,
        chosen,
        holdout=holdout,
        seed=seed,
        alpha=alpha,
        device=device,
        exact_max_pairs=exact_max_pairs,
        callback=callback,
        scale=scale,
    )


# -- output -----------------------------------------------------------------------------------
def _g(v: Any, digits: int = 6) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if math.isfinite(v) else str(v)
    return str(v)


def format_result(result: dict[str, Any], estimate_id: str | None = None) -> str:
    """A readable table of a result (the service's contract)."""
    rows: list[tuple[str, str]] = []
    distance = result.get("distance")
    if isinstance(distance, dict):
        lo, hi = (distance.get("ci95") or [None, None])[:2]
        rows.append(
            ("distance", f"{_g(distance.get('value'), 4)}  95% CI [{_g(lo, 4)}, {_g(hi, 4)}]"
             "  (W1 between the distributions, held-out)")
        )  # fmt: skip
    verdict = result.get("verdict")
    if isinstance(verdict, dict):
        rows.append(
            ("test", f"p = {_g(verdict.get('p_value'), 3)}  ({verdict.get('test')}, "
             f"{verdict.get('permutations')} permutations, alpha {_g(verdict.get('alpha'))})")
        )  # fmt: skip
    if estimate_id:
        rows.append(("estimate", estimate_id))
    rows.append(("method", _g(result.get("method"))))
    rows.append(("w1", _g(result.get("w1"))))
    if result.get("lower_bound") is not None:
        rows.append(("lower_bound", f"{_g(result['lower_bound'])}  (certified <= empirical W1)"))
        rows.append(("lipschitz_constant", _g(result.get("lipschitz_constant"))))
    hold = result.get("holdout")
    if isinstance(hold, dict):
        lo, hi = (hold.get("ci95") or [None, None])[:2]
        rows.append(
            (
                "holdout",
                f"{_g(hold.get('value'), 5)}  95% CI [{_g(lo, 5)}, {_g(hi, 5)}]"
                f"  (n_source={hold.get('n_source')}, n_target={hold.get('n_target')})",
            )
        )
    ex = result.get("exact")
    if isinstance(ex, dict):
        rows.append(
            ("exact", f"{_g(ex.get('value'))}  ({ex.get('solver')}, {_g(ex.get('seconds'), 3)} s)")
        )
    if result.get("upper_bound") is not None:
        rows.append(
            ("upper_bound", f"{_g(result['upper_bound'])}  (certified >= empirical W1; bracket "
             f"width {100 * float(result.get('bracket_width') or 0.0):.3g} %)")
        )  # fmt: skip
    floor = result.get("noise_floor")
    if isinstance(floor, dict):
        rows.append(
            ("noise_floor", f"{_g(floor.get('value'))}  (exact W1 of relabelled samples: the "
             "empirical figure of two samples of one distribution)")
        )  # fmt: skip
    if result.get("relative_gap") is not None:
        rows.append(("relative_gap", f"{100 * float(result['relative_gap']):.3g} %"))
    diag = result.get("diagnostics")
    if isinstance(diag, dict) and isinstance(diag.get("grad_norm"), dict):
        gn = diag["grad_norm"]
        qs = " / ".join(_g(gn.get(k), 3) for k in ("q05", "q50", "q95"))
        rows.append(("grad_norm q05/q50/q95", qs))
    env = diag.get("envelope") if isinstance(diag, dict) else None
    if isinstance(env, dict):
        kept = "network" if env.get("side") is None else f"{env['side']} envelope"
        more = f" over {env.get('anchors')} anchors" if env.get("side") is not None else ""
        rows.append(("potential", f"{kept}{more} (chosen on the validation samples)"))
    if result.get("method") == "lipschitz":
        rows.append(("steps", _g(result.get("steps"))))
    rows.append(("device", _g(result.get("device"))))
    rows.append(("seconds", _g(result.get("seconds"), 3)))
    width = max(len(k) for k, _ in rows)
    answer = sum(k in ("distance", "test") for k, _ in rows)  # the first rows: by how much
    lines = [headline(result)]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows[:answer]]
    lines += _feature_lines(result.get("features") or [])  # where
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows[answer:]]
    lines += [f"note: {n}" for n in result.get("notes") or []]
    return "\n".join(lines)


def _feature_lines(features: list[dict[str, Any]], top: int = 5) -> list[str]:
    """Where they differ: the top features, after the verdict."""
    if not features:
        return []
    shown = features[:top]
    width = max(len(str(f.get("name"))) for f in shown)
    out = [f"where (top {len(shown)} of {len(features)} features):"]
    for f in shown:
        share = f.get("attribution")
        share_text = "-" if share is None else f"{100 * float(share):5.1f} %"
        direction = f.get("direction")
        way = (
            "" if direction is None else ("  target higher" if direction > 0 else "  target lower")
        )
        out.append(
            f"  {str(f.get('name')).ljust(width)}  attribution {share_text}  "
            f"marginal W1 {_g(f.get('marginal_w1'), 4)}{way}"
        )
    return out


def headline(result: dict[str, Any]) -> str:
    """The answer in one sentence: the verdict's summary, or what was measured without one."""
    verdict = result.get("verdict")
    if isinstance(verdict, dict) and verdict.get("summary"):
        return str(verdict["summary"])
    return f"no two-sample test: empirical W1 of these samples {_g(result.get('w1'))}"


# -- commands ---------------------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> Any:
    from service.settings import Settings

    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    return Settings(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.guard import Guard

    settings = _settings(args)
    app = create_app(settings)
    if not _loopback(args.host) and not app.state.auth.enabled:
        if not args.insecure:
            print(
                f"lipwass: refusing to serve on {args.host} without API keys: anyone who reaches "
                "the port could read, delete and cancel everything. Create a key first "
                "(`lipwass keys create --tenant NAME`), or set LIPWASS_API_KEYS; "
                "--insecure serves without keys anyway.",
                file=sys.stderr,
            )
            return EXIT_USAGE
        print(
            f"lipwass: WARNING: serving on {args.host} with no API keys (--insecure)",
            file=sys.stderr,
        )
    print(
        f"lipwass: serving on http://{args.host}:{args.port} (data in {settings.data_dir}, "
        f"{'embedded' if settings.is_embedded else 'distributed'})",
        file=sys.stderr,
        flush=True,
    )
    guard = Guard(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=settings.max_connections,
        max_client_connections=settings.max_client_connections,
    )
    app.state.guard = guard
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        http=guard.protocol(),
        timeout_graceful_shutdown=5,
    )
    return EXIT_OK


def _loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_keys(args: argparse.Namespace) -> int:
    """Create, list or revoke API keys (in the service's database; the secret shown once)."""
    from service import auth
    from service.store import Database
    from service.store import keys as key_rows

    settings = _settings(args)
    db = Database(settings.resolved_database_url)
    try:
        if settings.migrate_on_start:
            db.migrate()
        if args.keys_command == "create":
            tenant = auth.check_tenant(args.tenant)
            scopes = auth.parse_scopes(args.scopes)
            row, key = key_rows.create(db, tenant, scopes, args.name)
            print(key)
            print(
                f"lipwass: key {row.id} for tenant {tenant!r} ({', '.join(scopes)}): the line "
                "above is its secret, shown this once; send it as 'Authorization: Bearer <key>'",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            rows = key_rows.all_keys(db)
            if args.json:
                print(json.dumps([_key_json(r) for r in rows], indent=2))
            else:
                print(f"{'id':18} {'tenant':16} {'scopes':18} {'created':20} status   name")
                for r in rows:
                    status = "revoked" if r.revoked_at else "active"
                    print(
                        f"{r.id:18} {r.tenant:16} {r.scopes:18} "
                        f"{r.created_at:%Y-%m-%d %H:%M:%S}  {status:8} {r.name or ''}"
                    )
        else:
            if not key_rows.revoke(db, args.id):
                print(f"lipwass: error: no active key {args.id!r}", file=sys.stderr)
                return EXIT_FAILED
            print(
                f"lipwass: key {args.id} revoked (API processes stop accepting it within "
                f"{settings.auth_cache_s:g} s)",
                file=sys.stderr,
            )
    finally:
        db.dispose()
    return EXIT_OK


def _key_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "tenant": row.tenant,
        "scopes": row.scopes.split(","),
        "name": row.name,
        "created_at": row.created_at.isoformat(),
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


def _config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if args.config:
        text = Path(args.config).read_text() if Path(args.config).is_file() else args.config
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--config is neither a JSON object nor a JSON file: {exc}") from None
        if not isinstance(config, dict):
            raise ValueError("--config must be a JSON object")
    for name in ("steps", "width", "depth", "batch_size", "lr"):
        value = getattr(args, name)
        if value is not None:
            config[name] = value
    return config


def cmd_estimate(args: argparse.Namespace) -> int:
    config = _config(args)
    bar = ProgressBar() if not args.quiet else None
    server = args.server or os.environ.get("LIPWASS_SERVER")
    out: tuple[dict[str, Any], str | None]
    try:
        if server:
            out = _estimate_remote(args, server, config, bar)
        else:
            out = _estimate_here(args, config, bar)
    finally:
        if bar:
            bar.close()
    result, estimate_id = out
    if args.json:
        doc = {"id": estimate_id, **result} if estimate_id else result
        print(json.dumps(doc, indent=2))
    else:
        print(format_result(result, estimate_id))
    return EXIT_OK


def _estimate_remote(
    args: argparse.Namespace, server: str, config: dict[str, Any], bar: Any
) -> tuple[dict[str, Any], str]:
    from service.client import Client

    with Client(server, timeout=args.timeout) as c:
        _options(args)  # a bad flag is refused here, before any upload
        upload = {k: getattr(args, k) for k in ("columns", "exclude", "header", "delimiter")}
        est = c.estimate(
            args.x, args.y, a=args.weights, b=args.weights, method=args.method, wait=False,
            crosscheck=args.crosscheck, holdout=args.holdout, alpha=args.alpha, scale=args.scale,
            seed=args.seed,
            config=config,
            upload={k: v for k, v in upload.items() if v is not None},
        )  # fmt: skip
        try:
            est = c.wait(est["id"], on_progress=bar)
        except KeyboardInterrupt:
            c.cancel(est["id"])  # Ctrl-C: do not leave the job running on the server
            print(f"\nlipwass: cancelled {est['id']}", file=sys.stderr)
            raise
        if args.report:
            Path(args.report).write_bytes(c.report_png(est["id"]))
        if args.potential and est["result"].get("lipschitz_constant") is not None:
            c.download_potential(est["id"], args.potential)
    return est["result"], est["id"]


def _estimate_here(
    args: argparse.Namespace, config: dict[str, Any], bar: Any
) -> tuple[dict[str, Any], None]:
    settings = _settings(args)
    x, a, y, b = _load_pair(args, settings)
    result, est = estimate_local(
        x, y, a, b, method=args.method, crosscheck=args.crosscheck, holdout=args.holdout,
        alpha=args.alpha, scale=args.scale, seed=args.seed, config=config,
        device=args.device or settings.device,
        exact_max_pairs=settings.exact_max_pairs, callback=bar,
    )  # fmt: skip
    if args.potential and est is not None:
        est.save(args.potential)
    if args.report:
        from service import report

        inp = report.ReportInputs(
            title=headline(result),
            numbers=report.summary_numbers("succeeded", result),
            notes=list(result.get("notes") or []),
            features=list(result.get("features") or []),
            history=np.asarray(est.history, float) if est is not None and est.history else None,
        )
        if est is not None:
            report.potential_views(
                inp, est.potential.cpu(), result["potential_center"],
                result["lipschitz_constant"], x, a, y, b,
                max_points=settings.report_max_points, grid=settings.report_grid, seed=args.seed,
            )  # fmt: skip
        Path(args.report).write_bytes(report.render_png(inp))
    return result, None


def cmd_exact(args: argparse.Namespace) -> int:
    from service import runner

    settings = _settings(args)
    x, a, y, b = _load_pair(args, settings)
    exact = runner.solve_exact(x, y, a, b, args.max_pairs or settings.exact_max_pairs)
    value, seconds = exact["value"], exact["seconds"]
    if args.json:
        print(json.dumps({"w1": value, "solver": exact["solver"], "seconds": seconds, "n": len(x),
                          "m": len(y), "d": x.shape[1]}))  # fmt: skip
    else:
        print(
            format_result(
                {"method": "exact", "w1": value, "device": "cpu", "seconds": seconds,
                 "exact": exact}
            )
        )  # fmt: skip
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from service.store import Database

    settings = _settings(args)
    settings.ensure_dirs()
    Database(settings.resolved_database_url).migrate()
    print(f"lipwass: database at head ({_redact(settings.resolved_database_url)})", file=sys.stderr)
    return EXIT_OK


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def cmd_worker(args: argparse.Namespace) -> int:
    from service import worker

    return int(worker.main(_settings(args), gpu=args.gpu, check_only=args.check))


def _column_flags(p: argparse.ArgumentParser) -> None:
    """The upload's column and weight options, applied to both files (nothing implicit)."""
    g = p.add_argument_group("columns and weights (both files; as the upload's ?options)")
    g.add_argument("--weights", metavar="COL", help="the column holding the sample weights")
    g.add_argument("--columns", metavar="A,B", help="feature columns to keep, in this order")
    g.add_argument("--exclude", metavar="C,D", help="columns to drop (an index, a label)")
    g.add_argument(
        "--header",
        choices=["auto", "true", "false"],
        help="CSV: does line 1 name the columns (auto: yes if no field is a number)",
    )
    g.add_argument("--delimiter", help="CSV: , ; | or tab (default: detected)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lipwass",
        description="Certified Wasserstein-1 distances from 1-Lipschitz neural potentials.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the HTTP API (embedded: SQLite + a local worker)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--data-dir", help="data folder (default: LIPWASS_DATA_DIR or ./lipwass-data)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument(
        "--insecure",
        action="store_true",
        help="serve on a non-loopback address with no API keys (anyone reaching it can do all)",
    )
    s.set_defaults(func=cmd_serve)

    k = sub.add_parser("keys", help="create, list or revoke API keys (tenants and scopes)")
    k.add_argument("--data-dir")
    ks = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kc = ks.add_parser("create", help="a new key; its secret is printed once")
    kc.add_argument("--tenant", default="default", help="whose objects the key sees")
    kc.add_argument(
        "--scopes", default="read,write", help="comma-separated: read, write, admin (read,write)"
    )
    kc.add_argument("--name", help="a label (who or what uses the key)")
    kl = ks.add_parser("list", help="every key, active or revoked (never the secrets)")
    kl.add_argument("--json", action="store_true")
    kr = ks.add_parser("revoke", help="revoke a key by id")
    kr.add_argument("id")
    k.set_defaults(func=cmd_keys)

    e = sub.add_parser("estimate", help="estimate W1(X, Y) (in-process, or with --server)")
    e.add_argument(
        "x", metavar="X", help="source samples: .npy, .csv, .tsv, .json, .arrow or .parquet"
    )
    e.add_argument("y", metavar="Y", help="target samples: same formats")
    _column_flags(e)
    e.add_argument("--server", help="lipwass URL (default: LIPWASS_SERVER; unset: in-process)")
    e.add_argument("--method", default="auto", choices=["auto", "lipschitz", "exact"])
    e.add_argument("--crosscheck", default="auto", choices=["auto", "always", "never"])
    e.add_argument("--holdout", type=float, default=0.2, help="fraction held out (default 0.2)")
    e.add_argument(
        "--alpha", type=float, default=0.05, help="level of the two-sample test (default 0.05)"
    )
    e.add_argument(
        "--scale",
        choices=("none", "standardize", "robust"),
        default="none",
        help="per-feature scaling before the Euclidean cost (default none: the data's units)",
    )
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--steps", type=int, help="most training steps")
    e.add_argument("--width", type=int)
    e.add_argument("--depth", type=int)
    e.add_argument("--batch-size", dest="batch_size", type=int)
    e.add_argument("--lr", type=float)
    e.add_argument("--config", help="estimator config as JSON (or a JSON file)")
    e.add_argument("--device", help="torch device (in-process only; default cuda if any)")
    e.add_argument("--report", help="also save the report picture (PNG) here")
    e.add_argument("--potential", help="also save the potential (safetensors) here")
    e.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout (s)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.add_argument("--data-dir", help=argparse.SUPPRESS)
    e.set_defaults(func=cmd_estimate)

    x = sub.add_parser("exact", help="exact W1(X, Y) (POT, or the closed form for d = 1)")
    x.add_argument("x", metavar="X")
    x.add_argument("y", metavar="Y")
    _column_flags(x)
    x.add_argument("--max-pairs", type=int, help="largest n*m (default: LIPWASS_EXACT_MAX_PAIRS)")
    x.add_argument("--json", action="store_true")
    x.set_defaults(func=cmd_exact)

    m = sub.add_parser("migrate", help="bring the database schema to the newest revision")
    m.add_argument("--data-dir")
    m.set_defaults(func=cmd_migrate)

    w = sub.add_parser("worker", help="run a Dramatiq worker (needs LIPWASS_BROKER_URL)")
    w.add_argument("--gpu", help="bind to this GPU (CUDA_VISIBLE_DEVICES)")
    w.add_argument("--check", action="store_true", help="health check: exit 0 if alive")
    w.add_argument("--data-dir")
    w.set_defaults(func=cmd_worker)
    return p


def main(argv: list[str] | None = None) -> int:
    """The ``lipwass`` entry point; returns the exit code (0 ok, 1 failed, 2 bad input)."""
    args = build_parser().parse_args(argv)
    from service.client import LipwassError

    try:
        return int(args.func(args))
    except LipwassError as exc:
        print(f"lipwass: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, FileNotFoundError) as exc:
        print(f"lipwass: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:  # e.g. lipcore.ExactNotConverged
        print(f"lipwass: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("lipwass: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
