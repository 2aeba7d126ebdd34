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

__version__ = "0.1.0"
