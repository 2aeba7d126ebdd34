"""What workers and gateways agree on to route session calls: neither side owns it, both import it.

* :mod:`.redis_schema`: the Redis keys, the Lua scripts that change them atomically, and the argument
  lists those scripts take;
* :mod:`.membership`: the registration record a worker's heartbeat writes and a gateway's poll reads;
* :mod:`.metadata`: the call metadata a gateway adds for the worker (owner identity, target instance).

This package may import only :mod:`cuvis_cluster.errors`, ``wire`` and ``common`` (tests/test_layers.py).
"""
