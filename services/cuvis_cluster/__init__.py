"""cuvis-ai-cluster: the CUVIS.AI gRPC API served by a gateway and a pool of GPU workers.

Sub-packages, one per role:

* ``wire``         generated stubs, the tensor codec and the error-to-status table
* ``common``       what both servers share: settings, telemetry, TLS, server bootstrap
* ``engine``       the protocol-free engine (sessions, pipelines, nodes, data, trainers); no grpc
* ``worker``       the thin gRPC servicer over the engine, and the worker process
* ``gateway``      the stateless, session-affine router
* ``client``       the Python SDK and the ``cuvis-ai`` command line
* ``localcluster`` ``cuvis-cluster up``: redis-server + workers + gateway on loopback
"""

import os

# gRPC core's fork handlers (on by default) make the parent's fork() wait for gRPC's threads to reach a
# safe point; a Popen with a preexec_fn (our children's parent-death signal) forks rather than vforks,
# and with calls in flight on other threads that wait never ends. Our processes fork only to exec, and
# no child uses the parent's gRPC state, so the handlers buy nothing here. Read when grpc initialises:
# set before any of our modules imports grpc; an operator's explicit setting wins.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

__version__ = "0.1.0"
