"""Gateway overhead, side by side in one run: direct vs cuvis-gateway vs nginx grpc_pass vs a naive proxy.

    .venv/bin/python bench/gateway_bench.py                  # 256 MiB Inference, 100-byte calls
    .venv/bin/python bench/gateway_bench.py --big-mib 64 --rounds 3 --small 500

Everything runs on 127.0.0.1: a real redis-server, one stand-in worker (tests/gateway/standin_worker.py:
a real grpc server with the real cluster membership), one ``cuvis-gateway``, nginx (Debian package)
with ``grpc_pass`` to the worker, and a naive ``grpc.aio`` generic pass-through proxy (store and
forward, identity serializers) as the baseline the issue describes.

Measured per path, interleaved round by round so that machine noise hits every path alike:

* small: ``Inference`` with a ~100-byte request on an existing session, p50 and p99 latency; the paths
  take turns in blocks of ``--block`` calls (``--block 1``: call by call);
* big: ``Inference`` whose request carries a 256 MiB tensor (pre-serialized once, sent as raw bytes),
  end to end until the reply arrives; median and best of the rounds.

The worker and every proxy are separate processes, as in production; the client is this process.
They run in process groups of their own and die with the bench: stopped in ``finally`` (also on Ctrl-C
or SIGTERM), killed by the kernel (``PR_SET_PDEATHSIG``) or a watchdog if the bench itself is killed
(:mod:`cuvis_cluster.common.children`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cuvis_cluster.common.children import GroupWatchdog, popen_kwargs, stop_children
from cuvis_cluster.common.ports import free_port

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "tests" / "gateway" / "standin_worker.py"
VENV_BIN = Path(sys.executable).parent
INFERENCE = "/cuvis_ai.v1.CuvisAIService/Inference"
OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not open port {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------------
# the naive proxy (a subprocess role)


def naive_proxy(listen: str, upstream: str) -> None:
    """grpc.aio generic pass-through: receives the whole message, then sends it on (two copies)."""
    import grpc

    async def run() -> None:
        channel = grpc.aio.insecure_channel(upstream, options=OPTIONS)

        class Forward(grpc.GenericRpcHandler):
            def service(self, details):
                method = details.method

                async def unary(request: bytes, context) -> bytes:
                    call = channel.unary_unary(method)
                    return await call(
                        request, metadata=context.invocation_metadata(), timeout=context.time_remaining()
                    )

                return grpc.unary_unary_rpc_method_handler(unary)

        server = grpc.aio.server(options=OPTIONS)
        server.add_generic_rpc_handlers((Forward(),))
        server.add_insecure_port(listen)
        await server.start()
        await server.wait_for_termination()

    asyncio.run(run())


# --------------------------------------------------------------------------------------------------
# the cluster under test


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 0;
    client_body_buffer_size 1m;
    http2_body_preread_size 1m;
    upstream worker {{ server {upstream}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            grpc_pass grpc://worker;
            grpc_read_timeout 600s;
            grpc_send_timeout 600s;
            grpc_buffer_size 1m;
        }}
    }}
}}
"""


class Rig:
    """The bench's server processes; each in its own process group, none outliving the bench."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.procs: list[subprocess.Popen] = []
        self.addresses: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        # Kills the groups (nginx's workers included) should this process die without stop().
        self.watchdog = GroupWatchdog.start()

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, **popen_kwargs())
        self.watchdog.watch(proc.pid)
        self.procs.append(proc)
        self.pids[name] = proc.pid
        return proc

    def start(self, with_nginx: bool, with_naive: bool) -> None:
        redis_port = free_port()
        redis = shutil.which("redis-server")
        if redis is None:
            raise SystemExit("redis-server not found (apt-get install --no-install-recommends redis-server)")
        p = self.spawn(
            "redis",
            [redis, "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        )
        wait_port(redis_port, p, "redis-server")
        redis_url = f"redis://127.0.0.1:{redis_port}/0"

        worker_port = free_port()
        p = self.spawn(
            "worker",
            [
                sys.executable,
                str(STANDIN),
                "--listen",
                f"127.0.0.1:{worker_port}",
                "--redis-url",
                redis_url,
                "--heartbeat-seconds",
                "2",
                "--heartbeat-ttl-seconds",
                "6",
            ],  # the production defaults
        )
        wait_port(worker_port, p, "worker")
        self.addresses["direct"] = f"127.0.0.1:{worker_port}"

        gw_port = free_port()
        p = self.spawn(
            "gateway",
            [
                str(VENV_BIN / "cuvis-gateway"),
                "--listen",
                f"127.0.0.1:{gw_port}",
                "--redis-url",
                redis_url,
                "--log-level",
                "WARNING",
            ],
        )
        wait_port(gw_port, p, "gateway")
        self.addresses["cuvis-gateway"] = f"127.0.0.1:{gw_port}"

        if with_nginx:
            nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
            if nginx is None:
                print(
                    "nginx not found (apt-get install nginx-light); skipping the nginx column",
                    file=sys.stderr,
                )
            else:
                port = free_port()
                conf = self.dir / "nginx.conf"
                user = "user root;" if os.geteuid() == 0 else ""
                conf.write_text(
                    NGINX_CONF.format(dir=self.dir, port=port, upstream=f"127.0.0.1:{worker_port}", user=user)
                )
                p = self.spawn("nginx", [nginx, "-c", str(conf), "-p", str(self.dir)])
                wait_port(port, p, "nginx")
                self.addresses["nginx grpc_pass"] = f"127.0.0.1:{port}"
        if with_naive:
            port = free_port()
            p = self.spawn(
                "naive",
                [
                    sys.executable,
                    __file__,
                    "--role",
                    "naive-proxy",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--upstream",
                    f"127.0.0.1:{worker_port}",
                ],
            )
            wait_port(port, p, "naive proxy")
            self.addresses["naive grpc.aio proxy"] = f"127.0.0.1:{port}"

    def stop(self) -> None:
        """SIGTERM to every group (last started first), 10 s, then SIGKILL to whatever is left."""
        stop_children(self.procs[::-1], grace=10, kill_after=5)
        self.watchdog.close()


# --------------------------------------------------------------------------------------------------
# measurement


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", default="bench", choices=["bench", "naive-proxy"])
    parser.add_argument("--listen")
    parser.add_argument("--upstream")
    parser.add_argument("--big-mib", type=int, default=256, help="tensor size of the big Inference [256]")
    parser.add_argument("--rounds", type=int, default=5, help="big calls per path [5]")
    parser.add_argument("--small", type=int, default=1000, help="small calls per path and round [1000]")
    parser.add_argument("--block", type=int, default=50, help="small calls per path before switching [50]")
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument("--no-naive", action="store_true")
    args = parser.parse_args()
    if args.role == "naive-proxy":
        naive_proxy(args.listen, args.upstream)
        return
    # A SIGTERM now unwinds like Ctrl-C, so the finally below stops every process the bench started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    import grpc

    from cuvis_cluster.wire.pb import pb, pb_grpc

    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    rig = Rig(workdir)
    try:
        rig.start(with_nginx=not args.no_nginx, with_naive=not args.no_naive)
        gateway = grpc.insecure_channel(rig.addresses["cuvis-gateway"], options=OPTIONS)
        grpc.channel_ready_future(gateway).result(timeout=30)
        stub = pb_grpc.CuvisAIServiceStub(gateway)
        deadline = time.monotonic() + 30
        while True:  # the gateway needs the worker's first heartbeat
            try:
                session = stub.CreateSession(pb.CreateSessionRequest()).session_id
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        small = pb.InferenceRequest(session_id=session)
        small.inputs.cube.raw_data = b"x" * (100 - small.ByteSize() - 5)
        small_bytes = small.SerializeToString()
        big = pb.InferenceRequest(session_id=session)
        big.inputs.cube.raw_data = b"\x01" * (args.big_mib << 20)
        big_bytes = big.SerializeToString()
        del big

        calls = {}
        for name, address in rig.addresses.items():
            channel = grpc.insecure_channel(address, options=OPTIONS)
            grpc.channel_ready_future(channel).result(timeout=30)
            calls[name] = channel.unary_unary(INFERENCE)
            for _ in range(200):
                calls[name](small_bytes)
            calls[name](big_bytes)  # warm-up: connection windows, allocator
        small_times: dict[str, list[float]] = {n: [] for n in calls}
        big_times: dict[str, list[float]] = {n: [] for n in calls}
        gateway_cpu = 0.0
        for _round in range(args.rounds):
            # Small calls alternate between the paths in blocks of --block calls: noise from the rest
            # of the machine lands on every path alike. --block 1 alternates call by call, which
            # measures every call as a cold wake-up of an otherwise idle process.
            cpu0 = cpu_seconds(rig.pids["gateway"])
            for _ in range(max(args.small // args.block, 1)):
                for name, call in calls.items():
                    times = small_times[name]
                    for _ in range(args.block):
                        t = time.perf_counter()
                        call(small_bytes)
                        times.append(time.perf_counter() - t)
            gateway_cpu += cpu_seconds(rig.pids["gateway"]) - cpu0
            for name, call in calls.items():
                t = time.perf_counter()
                reply = pb.InferenceResponse.FromString(call(big_bytes))
                big_times[name].append(time.perf_counter() - t)
                assert reply.outputs["request"].shape[0] == len(big_bytes)
        per_round = max(args.small // args.block, 1) * args.block
        report(args, small_times, big_times, gateway_cpu / (args.rounds * per_round))
    finally:
        rig.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def report(args, small_times, big_times, gateway_cpu_per_call: float) -> None:
    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return values[min(int(len(values) * q), len(values) - 1)] * 1e3

    d50, d99 = pct(small_times["direct"], 0.5), pct(small_times["direct"], 0.99)
    dbig = statistics.median(big_times["direct"])
    runs = f"{args.rounds} rounds x {args.small} small calls (blocks of {args.block}); big {args.big_mib} MiB"
    print(f"\nmachine: {os.cpu_count()} CPUs; {runs}")
    head = f"{'path':24} {'small p50':>10} {'p99':>8} {'+p50':>8}"
    print(f"{head} | {'big median':>10} {'best':>7} {'x direct':>8}")
    for name in small_times:
        p50, p99 = pct(small_times[name], 0.5), pct(small_times[name], 0.99)
        med, best = statistics.median(big_times[name]), min(big_times[name])
        small = f"{name:24} {p50:8.3f}ms {p99:6.3f}ms {p50 - d50:+7.3f}ms"
        print(f"{small} | {med:9.3f}s {best:6.3f}s {med / dbig:7.2f}x")
    print(f"cuvis-gateway CPU per small call: {gateway_cpu_per_call * 1e6:.0f} us  (direct p99 {d99:.3f} ms)")
    print(f"load average during the run: {os.getloadavg()[0]:.2f} (other processes make every column slower)")


if __name__ == "__main__":
    main()
