"""The execution order of a pipeline graph: a stable topological sort, and the cycle it reports."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from cuvis_cluster.errors import InvalidArgument


def topological_order(names: list[str], connections: Sequence[tuple[str, str, str, str]]) -> list[str]:
    """The nodes in an order where every node follows its sources (ties keep the config's order).

    A cycle is INVALID_ARGUMENT naming its nodes and connections.
    """
    position = {n: i for i, n in enumerate(names)}
    indegree = dict.fromkeys(names, 0)
    children: dict[str, set[str]] = {n: set() for n in names}
    for src, _, dst, _ in connections:
        if dst not in children[src]:
            children[src].add(dst)
            indegree[dst] += 1
    ready = deque(n for n in names if indegree[n] == 0)
    order: list[str] = []
    while ready:
        name = ready.popleft()
        order.append(name)
        for child in sorted(children[name], key=position.__getitem__):
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    if len(order) != len(names):
        stuck = [n for n in names if n not in order]
        cycle = _find_cycle(stuck, children)
        edges = [f"{a}.{p} -> {b}.{q}" for a, p, b, q in connections if a in cycle and b in cycle]
        raise InvalidArgument(
            f"the pipeline has a cycle through nodes {' -> '.join([*cycle, cycle[0]])} "
            f"(connections: {', '.join(edges)})",
            field=f"{cycle[0]}",
        )
    return order


def _find_cycle(stuck: list[str], children: Mapping[str, set[str]]) -> list[str]:
    stuck_set = set(stuck)
    # Walk forward inside the stuck set until a node repeats; the repeated stretch is a cycle.
    path: list[str] = []
    seen: dict[str, int] = {}
    current = stuck[0]
    while current not in seen:
        seen[current] = len(path)
        path.append(current)
        nxt = sorted(c for c in children[current] if c in stuck_set)
        if not nxt:  # pragma: no cover - every stuck node has a stuck child
            return path
        current = nxt[0]
    return path[seen[current] :]
