"""The ``zeroserve`` command: ``up`` runs the local runtime, ``status`` shows its revisions."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence

from cluster.local.supervisor import SupervisorSettings
from cluster.spec_loader import SpecError
from dataplane.heap import freeze_startup_heap
from metrics.logs import configure_logging
from zeroserve import shadow_status
from zeroserve.runtime import LocalRuntime, RuntimeSettings
from zeroserve.specfile import config_warnings
from zeroserve.specfile import load as load_spec_file
from zeroserve.status import StatusError, fetch, render, render_cold_starts

log = logging.getLogger("zeroserve.runtime")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zeroserve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the local runtime for a spec file until Ctrl-C")
    up.add_argument("spec", help="service spec YAML (see docs/configuration.md)")
    up.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    up.add_argument("--port", type=int, default=8080, help="ingress port (default %(default)s)")
    up.add_argument(
        "--status-port",
        type=int,
        default=9090,
        help="/v1/revisions and /metrics (the autoscaler's and the activator's) (default %(default)s)",
    )
    up.add_argument(
        "--quiet-replicas", action="store_true", help="discard the replicas' own output"
    )
    up.add_argument(
        "--no-model-prefork",
        action="store_true",
        help="spawn every model server as a new process instead of forking it from a parked "
        "process that has imported its framework (the framework zygote)",
    )
    up.add_argument(
        "--no-model-preload",
        action="store_true",
        help="keep the framework zygote to the imports: each pytorch replica loads its model "
        "itself instead of taking the one its parked process loaded (one CPU copy per artifact)",
    )
    up.add_argument("--log-level", default="info")
    up.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text: every process logs text, model-server lines prefixed with their pod name; "
        "json: every line a JSON record, model-server lines wrapped with their pod "
        "(default %(default)s)",
    )
    st = sub.add_parser("status", help="a table of revisions from a running runtime")
    st.add_argument("--url", default="http://127.0.0.1:9090/v1/revisions")
    st.add_argument("--json", action="store_true", help="print the raw JSON rows")
    st.add_argument(
        "--metrics-url",
        default="",
        help="the activator's Prometheus metrics, for the shadow table (default: /metrics "
        "beside --url, the local runtime's; on Kubernetes the activator's :9090/metrics)",
    )
    st.add_argument(
        "--cold-starts",
        action="store_true",
        help="print only each revision's last cold start by phase (by default it follows the "
        "revisions table)",
    )
    sub.add_parser("validate", help="check a spec file and exit").add_argument("spec")
    rd = sub.add_parser(
        "render",
        help="print the Kubernetes manifests of a spec or InferenceService file "
        "(kubectl apply -f -)",
    )
    rd.add_argument("spec", help="service spec or InferenceService YAML")
    rd.add_argument(
        "--image",
        default=f"zeroserve:{_version()}",
        help="the zeroserve image: queue-proxy, built-in model server, fetch step "
        "(default %(default)s)",
    )
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zeroserve")
    except PackageNotFoundError:
        return "latest"


def _render(args: argparse.Namespace) -> int:
    """``zeroserve render``: the manifests on stdout, errors on stderr (exit 1)."""
    from cluster.kubernetes.render import render, to_yaml
    from zeroserve.specfile import load_translated

    try:
        spec, translation = load_translated(args.spec)
    except SpecError as exc:
        for error in exc.errors:
            print(f"zeroserve render: {error}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"zeroserve render: {exc}", file=sys.stderr)
        return 1
    kube = translation.kube if translation is not None else None
    print(to_yaml(render(spec, image=args.image, kube=kube)), end="")
    return 0


def _banner(rt: LocalRuntime) -> str:
    lines = [
        f"zeroserve is up: ingress {rt.url}",
        f"  status: zeroserve status --url http://{rt.settings.host}:{rt.status_port}/v1/revisions",
        f"  metrics: http://{rt.settings.host}:{rt.status_port}/metrics (autoscaler_*, activator_*)",
        "",
    ]
    for svc in rt.spec.services:
        host = f"{svc.name}.{svc.namespace}.{rt.spec.domain}"
        split = ", ".join(
            f"{t.revision} {t.percent}%" + (f" (tag {t.tag})" if t.tag else "") for t in svc.traffic
        )
        lines.append(f"  service {svc.namespace}/{svc.name}: {split}")
        lines.append(f"    curl -H 'Host: {host}' {rt.url}/v2/models/{svc.name}")
        lines.append(
            f"    curl {rt.url}/v1/models/{svc.name}:predict -d '{{\"instances\": [...]}}'"
        )
        for t in svc.traffic:
            if t.tag:
                lines.append(f"    tag {t.tag}: Host {t.tag}-{host}")
    lines.append("")
    lines.append("Ctrl-C stops it (requests in flight finish, replicas drain).")
    return "\n".join(lines)


def _banner_fields(rt: LocalRuntime) -> dict[str, object]:
    """The banner as one JSON log record's fields (``--log-format json``)."""
    base = f"http://{rt.settings.host}:{rt.status_port}"
    return {
        "ingress": rt.url,
        "status_url": f"{base}/v1/revisions",
        "metrics_url": f"{base}/metrics",
        "services": [
            {
                "service": f"{svc.namespace}/{svc.name}",
                "host": f"{svc.name}.{svc.namespace}.{rt.spec.domain}",
                "traffic": [
                    {"revision": t.revision, "percent": t.percent, "tag": t.tag}
                    for t in svc.traffic
                ],
            }
            for svc in rt.spec.services
        ],
    }


def supervisor_settings(args: argparse.Namespace) -> SupervisorSettings:
    """The replicas' settings that ``zeroserve up``'s flags give."""
    return SupervisorSettings(
        host=args.host,
        log_children=not args.quiet_replicas,
        log_format=args.log_format,
        model_prefork=not args.no_model_prefork,
        model_preload=not args.no_model_preload,
    )


async def _up(args: argparse.Namespace) -> int:
    settings = RuntimeSettings(
        host=args.host,
        port=args.port,
        status_port=args.status_port,
        supervisor=supervisor_settings(args),
    )
    rt = LocalRuntime(args.spec, settings)
    json_logs = args.log_format == "json"  # then every line is a JSON record, the banner too
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await rt.start()
    except OSError as exc:
        if json_logs:
            log.error("cannot listen", extra={"error": str(exc)})
        else:
            print(f"zeroserve: cannot listen: {exc}", file=sys.stderr)
        await rt.close()
        return 1
    freeze_startup_heap()  # (the activator runs in this process: no full traversals of it)
    if json_logs:
        log.info("zeroserve is up", extra=_banner_fields(rt))
    else:
        print(_banner(rt), flush=True)
    stopper = asyncio.create_task(stop.wait())
    runner = asyncio.create_task(rt.wait())
    done, _ = await asyncio.wait({stopper, runner}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if runner in done:
        log.error("a runtime loop died", extra={"error": repr(runner.exception())})
        code = 1
    runner.cancel()
    stopper.cancel()
    if json_logs:
        log.info("shutting down, draining replicas")
    else:
        print("zeroserve: shutting down (draining replicas)", file=sys.stderr, flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await rt.close()
    return code


def _shadow_table(url: str) -> str:
    """The shadow revisions' agreement (zeroserve.shadow_status), "" when there are none or
    the metrics cannot be read (the revisions table stands on its own)."""
    try:
        return shadow_status.render(shadow_status.fetch(url))
    except StatusError as exc:
        print(f"zeroserve status: {exc}", file=sys.stderr)
        return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "status":
        try:
            rows = fetch(args.url)
        except StatusError as exc:
            print(f"zeroserve status: {exc}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        cold = render_cold_starts(rows)
        if args.cold_starts:
            print(cold or "(no cold starts yet)")
        else:
            print(render(rows) + (f"\n\n{cold}" if cold else ""))
            shadows = _shadow_table(args.metrics_url or shadow_status.metrics_url(args.url))
            if shadows:
                print(f"\n{shadows}")
        return 0
    if args.command == "render":
        return _render(args)
    if args.command == "validate":
        try:
            spec = load_spec_file(args.spec)
        except SpecError as exc:
            for error in exc.errors:
                print(f"zeroserve validate: {error}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"zeroserve validate: {exc}", file=sys.stderr)
            return 1
        for warning in config_warnings(spec):
            print(f"zeroserve validate: warning: {args.spec}: {warning}", file=sys.stderr)
        print(f"{args.spec}: ok ({len(spec.services)} services)")
        return 0
    configure_logging(args.log_level, args.log_format)
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_up(args))
    except SpecError as exc:  # the runtime does not start on an invalid spec
        if args.log_format == "json":
            log.error("spec invalid, not starting", extra={"errors": list(exc.errors)})
        else:
            for error in exc.errors:
                print(f"zeroserve up: {error}", file=sys.stderr)
        return 1
    except OSError as exc:
        if args.log_format == "json":
            log.error("zeroserve up failed", extra={"error": str(exc)})
        else:
            print(f"zeroserve up: {exc}", file=sys.stderr)
        return 1
