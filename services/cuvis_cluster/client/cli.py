"""``cuvis-ai``: the command-line client of cuvis-ai-cluster.

Exit status: 0 on success; 10 + the gRPC status number when the server refuses a call (NOT_FOUND -> 15,
UNAVAILABLE -> 24, ...; ``cuvis-ai exit-codes`` prints the table); 1 for problems found on the client side
(missing input file); 2 for a bad command line; 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from cuvis_cluster import errors
from cuvis_cluster.client import Client, Session, format_progress, read_inputs
from cuvis_cluster.client._core import check_overrides
from cuvis_cluster.client._errors import (
    EXIT_INTERRUPTED,
    EXIT_LOCAL_ERROR,
    EXIT_NOT_SERVING,
    HINTS,
    exit_code_for,
    status_code,
)
from cuvis_cluster.client._progress import attached_to_terminal
from cuvis_cluster.client.settings import ClientSettings

PROG = "cuvis-ai"


def _print(*parts: Any) -> None:
    print(*parts, flush=True)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _bytes(n: int) -> str:
    if n <= 0:
        return "-"
    return f"{n / (1 << 30):.1f} GiB"


# -- commands ------------------------------------------------------------------------------------------
def cmd_health(client: Client, args: argparse.Namespace) -> int:
    status = client.health(args.service, timeout=args.wait)
    target = f" ({args.service})" if args.service else ""
    _print(f"{client.address}{target}: {status}")
    return 0 if status == "SERVING" else EXIT_NOT_SERVING


def cmd_workers(client: Client, args: argparse.Namespace) -> int:
    workers = client.list_workers()
    if args.json:
        _print(json.dumps([MessageToDict(w, preserving_proto_field_name=True) for w in workers], indent=2))
        return 0
    if not workers:
        _print("no live workers")
        return 0
    now_ms = int(time.time() * 1000)
    rows = []
    for w in workers:
        age = f"{max(now_ms - w.updated_unix_ms, 0) / 1000:.1f}s" if w.updated_unix_ms else "-"
        rows.append(
            [
                w.address,
                w.instance_id[:12],
                w.device or "-",
                f"{w.sessions}/{w.capacity}",
                "yes" if w.draining else "no",
                f"{_bytes(w.device_memory_free_bytes)} / {_bytes(w.device_memory_total_bytes)}",
                w.version or "-",
                age,
            ]
        )
    header = ["ADDRESS", "INSTANCE", "DEVICE", "SESSIONS", "DRAINING", "MEM FREE/TOTAL", "VERSION", "SEEN"]
    _print(_table(rows, header))
    for w in workers:
        if w.session_ids:
            _print(f"{w.address} sessions: {', '.join(w.session_ids)}")
    total = sum(w.sessions for w in workers)
    capacity = sum(w.capacity for w in workers)
    _print(f"{len(workers)} worker(s), {total}/{capacity} sessions")
    return 0


def cmd_pipelines_list(client: Client, args: argparse.Namespace) -> int:
    pipelines = client.list_pipelines(args.tag)
    if args.json:
        _print(json.dumps([MessageToDict(p, preserving_proto_field_name=True) for p in pipelines], indent=2))
        return 0
    rows = [
        [
            p.pipeline_path,
            p.metadata.name or "-",
            ",".join(p.metadata.tags) or "-",
            "yes" if p.weights_path else "no",
        ]
        for p in pipelines
    ]
    if rows:
        _print(_table(rows, ["PATH", "NAME", "TAGS", "WEIGHTS"]))
    _print(f"{len(rows)} pipeline(s)" + (f" tagged {args.tag!r}" if args.tag else ""))
    return 0


def cmd_pipelines_info(client: Client, args: argparse.Namespace) -> int:
    path = args.path if args.path.endswith((".yaml", ".yml")) else f"{args.path}.yaml"
    info = client.pipeline_info(path)
    if args.json:
        _print(json.dumps(MessageToDict(info, preserving_proto_field_name=True), indent=2))
        return 0
    meta = info.metadata
    _print(f"path:        {info.pipeline_path}")
    _print(f"name:        {meta.name}")
    if meta.description:
        _print(f"description: {meta.description}")
    if meta.tags:
        _print(f"tags:        {', '.join(meta.tags)}")
    if meta.author:
        _print(f"author:      {meta.author}")
    _print(f"weights:     {info.weights_path or '(none)'}")
    _print(f"server file: {info.resolved_path}")
    if not args.brief:
        _print("---")
        _print(info.yaml_content.rstrip())
    return 0


def _run_training(session: Session, trainer: str, args: argparse.Namespace) -> str:
    """Train with a bar on terminals and one line per terminal message otherwise; returns the status."""
    show_bar = attached_to_terminal() if args.progress is None else args.progress
    stream = session.train(trainer, progress=show_bar)
    for resp in stream:
        if args.verbose or (not show_bar and resp.status != 1):
            _print(f"[{trainer}] {format_progress(resp)}")
    if stream.last is not None and not args.verbose and show_bar:
        _print(f"[{trainer}] {format_progress(stream.last)}")
    return stream.status


def cmd_train(client: Client, args: argparse.Namespace) -> int:
    trainers = ["statistical", "gradient"] if args.two_phase else [args.trainer]
    check_overrides(args.override)  # refuse a malformed override before any call
    with client.create_session() as session:
        _print(f"session {session.id}")
        config = session.configure_trainrun(args.trainrun, args.override)
        name = config.get("name") or args.trainrun
        _print(f"train run {name} resolved and applied ({len(args.override)} overrides)")
        for trainer in trainers:
            status = _run_training(session, trainer, args)
            if status != "COMPLETE":
                _print(f"{trainer} training ended {status}")
                return 1
        if args.save:
            saved = session.save_trainrun(args.save, save_weights=not args.no_weights)
            _print(f"saved train run: {saved.trainrun_path}")
            _print(f"saved pipeline:  {saved.pipeline_path}")
            if saved.weights_path:
                _print(f"saved weights:   {saved.weights_path}")
    return 0


def cmd_restore(client: Client, args: argparse.Namespace) -> int:
    session = client.restore_trainrun(args.trainrun, weights_path=args.weights, strict=args.strict)
    with session:
        _print(f"restored {args.trainrun} into session {session.id}")
        inputs = session.inputs()
        outputs = session.outputs()
        _print(f"inputs:  {', '.join(sorted(inputs)) or '-'}")
        _print(f"outputs: {', '.join(sorted(outputs)) or '-'}")
        if args.continue_training:
            status = _run_training(session, args.trainer, args)
            if status != "COMPLETE":
                _print(f"{args.trainer} training ended {status}")
                return 1
        if args.save:
            saved = session.save_trainrun(args.save, save_weights=True)
            _print(f"saved train run: {saved.trainrun_path}")
            if saved.weights_path:
                _print(f"saved weights:   {saved.weights_path}")
    return 0


def cmd_infer(client: Client, args: argparse.Namespace) -> int:
    from cuvis_cluster.client.pictures import write_outputs

    frames = read_inputs(args.input, frame=args.frame)
    out = Path(args.out)
    with client.create_session() as session:
        session.load_pipeline(args.pipeline, args.override)
        if args.weights_file:
            session.load_weights(file=args.weights_file, strict=args.strict)
        elif args.weights:
            session.load_weights(args.weights, strict=args.strict)
        result = session.infer_frames(frames, output_specs=args.output, timeout=args.infer_timeout)
    written = write_outputs(
        result,
        out,
        cube=frames.cube,
        wavelengths=frames.wavelengths,
        stem=Path(args.input).stem,
        scores_name=args.scores,
        decisions_name=args.decisions,
    )
    for name, array in sorted(result.items()):
        _print(f"{name}: {array.dtype}{list(array.shape)}")
    for name, value in sorted(result.metrics.items()):
        _print(f"{name} = {value:.6g}")
    for kind, path in written.items():
        _print(f"wrote {kind}: {path}")
    return 0


def cmd_visualize(client: Client, args: argparse.Namespace) -> int:
    source = Path(args.pipeline).expanduser()
    if source.suffix.lower() in (".yaml", ".yml", ".json") and source.is_file():
        data = client.visualize_config(source.read_text(), args.format)
        stem = source.stem
    else:
        with client.create_session() as session:
            config = session.resolve_config("pipeline", args.pipeline, args.override)
        data = client.visualize_config(config, args.format)
        stem = Path(args.pipeline).name.removesuffix(".yaml")
    out = Path(args.out) if args.out else Path(f"{stem}.{args.format}")
    if args.format == "svg":
        from cuvis_cluster.client.pictures import save_svg

        save_svg(data, out)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    _print(f"wrote {args.format}: {out}")
    return 0


def cmd_exit_codes(_client: Client | None, _args: argparse.Namespace) -> int:
    rows = [["0", "OK", "success"], ["1", "-", "client-side problem (input file, config file)"]]
    rows.append(["2", "-", "bad command line"])
    rows.append([str(EXIT_NOT_SERVING), "-", "health: reachable, but not SERVING"])
    for code in grpc.StatusCode:
        if code is not grpc.StatusCode.OK:
            rows.append([str(exit_code_for(code)), code.name, HINTS.get(code, "")])
    rows.append([str(EXIT_INTERRUPTED), "-", "interrupted (Ctrl-C)"])
    _print(_table(rows, ["EXIT", "STATUS", "MEANING"]))
    return 0


# -- parser --------------------------------------------------------------------------------------------
def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--override",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra-style override, e.g. data.batch_size=2 (repeatable)",
    )


def _add_training_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw a progress bar (default: only when stderr is a terminal)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="print every progress message")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Command-line client of cuvis-ai-cluster (the CUVIS.AI hyperspectral pipeline service).",
        epilog="Exit status: 0 ok; 10 + gRPC status number on a server error (see `cuvis-ai exit-codes`); "
        "1 client-side error; 2 usage; 130 interrupted.",
    )
    ClientSettings.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("health", help="gRPC health of the gateway (exit 0 when SERVING)")
    p.add_argument("--service", default="", help="service name to check (default: the whole server)")
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for an answer")
    p.set_defaults(func=cmd_health, connect_check=False)

    p = sub.add_parser("workers", help="live workers with their sessions and devices")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_workers)

    pipelines = sub.add_parser("pipelines", help="pipelines in the server's configs")
    psub = pipelines.add_subparsers(dest="pipelines_command", required=True, metavar="ACTION")
    p = psub.add_parser("list", help="list pipelines")
    p.add_argument("--tag", help="only pipelines with this tag")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_pipelines_list)
    p = psub.add_parser("info", help="show one pipeline and its YAML")
    p.add_argument("path", help="pipeline path as listed, e.g. rx_statistical")
    p.add_argument("--brief", action="store_true", help="metadata only, no YAML")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_pipelines_info)

    p = sub.add_parser("train", help="resolve a train run, train it, optionally save it")
    p.add_argument("trainrun", help="train-run config, e.g. rx_statistical or trainrun/deep_svdd")
    _add_overrides(p)
    p.add_argument("--trainer", choices=["statistical", "gradient", "calibration"], default="statistical")
    p.add_argument(
        "--two-phase", action="store_true", help="statistical initialisation, then gradient training"
    )
    p.add_argument("--save", metavar="PATH", help="save the train run (server path under the output root)")
    p.add_argument("--no-weights", action="store_true", help="with --save: do not write the weights")
    _add_training_output(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("infer", help="run a pipeline on an .npz/.cu3s input and write outputs and pictures")
    p.add_argument("input", help="input .npz (cube, wavelengths) or .cu3s file")
    p.add_argument("--pipeline", "-p", required=True, help="server pipeline config name, or a local .yaml")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--weights", "-w", help="server-side .pt path (searched in the session's paths)")
    weights.add_argument("--weights-file", help="local .pt file to upload")
    p.add_argument(
        "--strict", action=argparse.BooleanOptionalAction, default=None, help="strict weight loading"
    )
    p.add_argument("--out", required=True, help="directory for the .npz outputs and the PNG pictures")
    p.add_argument("--output", action="append", default=[], help="only return this output (repeatable)")
    p.add_argument("--scores", help="output to draw as the heatmap (default: the *.scores output)")
    p.add_argument("--decisions", help="output to overlay (default: the *.decisions output)")
    p.add_argument("--frame", type=int, default=0, help=".cu3s: measurement index")
    p.add_argument("--infer-timeout", type=float, default=None, help="deadline of the Inference call (s)")
    _add_overrides(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("visualize", help="render a pipeline graph (svg, png, dot, mermaid)")
    p.add_argument("pipeline", help="server pipeline config name, or a local .yaml")
    p.add_argument("--format", "-f", default="svg", choices=["svg", "png", "dot", "mermaid"])
    p.add_argument("--out", help="output file (default: <pipeline>.<format>)")
    _add_overrides(p)
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("restore", help="restore a saved train run, optionally continue training")
    p.add_argument("trainrun", help="server path of a saved train-run YAML")
    p.add_argument("--weights", help="server path of weights to load")
    p.add_argument(
        "--strict", action=argparse.BooleanOptionalAction, default=None, help="strict weight loading"
    )
    p.add_argument("--continue", dest="continue_training", action="store_true", help="train further")
    p.add_argument("--trainer", choices=["statistical", "gradient", "calibration"], default="gradient")
    p.add_argument("--save", metavar="PATH", help="save the train run afterwards")
    _add_training_output(p)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("exit-codes", help="print the exit status of every gRPC status code")
    p.set_defaults(func=cmd_exit_codes, offline=True)
    return parser


def report_error(exc: BaseException) -> int:
    code = status_code(exc)
    if code is None:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_LOCAL_ERROR
    method = getattr(exc, "method", "")
    if not method:  # raised by the SDK before any call
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_LOCAL_ERROR
    what = "cannot connect" if method == "connect" else f"{method} failed"
    print(f"{PROG}: error: {what}: {code.name}: {exc}", file=sys.stderr)
    hint = HINTS.get(code)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)
    return exit_code_for(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "offline", False):
        return args.func(None, args)
    try:
        settings = ClientSettings.from_namespace(args)
    except Exception as exc:  # pydantic.ValidationError
        parser.error(str(exc))
    try:
        client = settings.connect()
    except ValueError as exc:
        parser.error(str(exc))
    try:
        with client:
            if getattr(args, "connect_check", True):
                client.wait_until_ready(settings.connect_timeout)
            return args.func(client, args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except errors.CuvisError as exc:
        return report_error(exc)
    except (OSError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_LOCAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
