"""Call metadata a gateway adds to the calls it forwards, read by the worker.

Clients cannot set these themselves: the gateway drops every incoming key under :data:`PREFIX`
before it forwards a call, then adds its own.
"""

from __future__ import annotations

PREFIX = "x-cuvis-"

# The identity the gateway authenticated (bearer token or client certificate). The worker stores
# it as the session's owner and answers NOT_FOUND to any other identity.
OWNER_METADATA = PREFIX + "owner"
# The worker instance a session's route points at. A worker whose own instance id differs is a
# later process at the same address: it refuses the call (see cuvis_cluster.worker.fencing).
INSTANCE_METADATA = PREFIX + "worker-instance"

# The cluster credential (``cluster_token_file``): gateways send it on every call to a worker, and a
# worker configured with it refuses calls without it (UNAUTHENTICATED).
CLUSTER_TOKEN_METADATA = PREFIX + "cluster-token"

# The quota reservation a gateway made for a CreateSession ("<ticket> <subject>"): the worker records the
# new session under that subject in the same Redis script that writes its route (routing/redis_schema).
QUOTA_METADATA = PREFIX + "quota"

# The same keys as HTTP/2 header names, as the gateway's front end handles them.
OWNER_HEADER = OWNER_METADATA.encode("ascii")
INSTANCE_HEADER = INSTANCE_METADATA.encode("ascii")
CLUSTER_TOKEN_HEADER = CLUSTER_TOKEN_METADATA.encode("ascii")
QUOTA_HEADER = QUOTA_METADATA.encode("ascii")
