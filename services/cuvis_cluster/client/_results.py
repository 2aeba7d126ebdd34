"""What calls return: :class:`InferenceResult`, and the bookkeeping of a Train progress stream.

:class:`TrainProgress` holds everything about a Train stream that does not depend on how it is read: the
last message, counts, early stopping, the progress bar, and what the end of the stream means. The sync
:class:`~cuvis_cluster.client.TrainStream` and the asyncio
:class:`~cuvis_cluster.client.aio.AsyncTrainStream` only read messages and cancel the call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import grpc
import numpy as np

from cuvis_cluster import errors
from cuvis_cluster.client._errors import ServerError, from_rpc_error, local_error
from cuvis_cluster.client._progress import TERMINAL_STATUSES, ProgressBar, status_name
from cuvis_cluster.wire import fastwire
from cuvis_cluster.wire.pb import pb


class InferenceResult(Mapping[str, np.ndarray]):
    """Outputs of one Inference call: a mapping ``"node.port" -> numpy array`` plus scalar ``metrics``."""

    def __init__(self, resp: pb.InferenceResponse | fastwire.FastInferenceResponse) -> None:
        # Read-only numpy views on the reply's bytes, no copies.
        outputs, metrics = fastwire.response_arrays(resp)
        self.outputs: dict[str, np.ndarray] = outputs
        self.metrics: dict[str, float] = metrics

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)

    def find(self, port: str) -> tuple[str, np.ndarray] | None:
        """The first output whose port is ``port`` (``"scores"`` matches ``"rx.scores"``)."""
        for name, array in self.outputs.items():
            if name == port or name.rsplit(".", 1)[-1] == port:
                return name, array
        return None

    def scores(self) -> tuple[str, np.ndarray] | None:
        """The anomaly score map: a ``*.scores`` output, else any output named like a score."""
        found = self.find("scores")
        if found is None:
            found = next(((n, a) for n, a in self.outputs.items() if "score" in n.rsplit(".", 1)[-1]), None)
        return found

    def decisions(self) -> tuple[str, np.ndarray] | None:
        """The per-pixel decisions: a ``*.decisions`` output, if the pipeline has one."""
        return self.find("decisions")

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self.outputs.items())
        return f"InferenceResult({shapes}; metrics={self.metrics})"


class TrainProgress:
    """State of one Train stream, fed by the sync or async reader.

    Attributes
    ----------
    last:
        The latest message (``None`` before the first).
    messages:
        How many messages were received.
    stopped_early:
        True once ``early_stop`` asked to stop.
    """

    def __init__(
        self,
        *,
        early_stop: Callable[[pb.TrainResponse], bool] | None,
        progress: bool,
        description: str,
    ) -> None:
        self._early_stop = early_stop
        self._want_bar = progress
        self._description = description
        self._bar: ProgressBar | None = None
        self._done = False
        self._cancelled = False
        self._terminal = False
        self.last: pb.TrainResponse | None = None
        self.messages = 0
        self.stopped_early = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def status(self) -> str:
        """Status name of the last message (``"COMPLETE"``...) or ``"CANCELLED"`` after a client cancel."""
        if self._cancelled:
            return "CANCELLED"
        return status_name(self.last.status) if self.last is not None else "UNSPECIFIED"

    def _received(self, resp: pb.TrainResponse) -> bool:
        """Record a message; True when ``early_stop`` wants the run cancelled now."""
        self.last = resp
        self.messages += 1
        if self._want_bar:
            if self._bar is None:
                self._bar = ProgressBar(self._description)
            self._bar.update(resp)
        if resp.status in TERMINAL_STATUSES:
            # Keep reading: the call's own status follows (e.g. INVALID_ARGUMENT after an ERROR message).
            self._terminal = True
            return False
        if self._early_stop is not None and self._early_stop(resp):
            self.stopped_early = True
            return True
        return False

    def _ended(self) -> errors.CuvisError | None:
        """The stream ended with status OK: the error to raise when its last message was an ERROR."""
        self._finish()
        if self.last is not None and self.last.status == pb.TRAIN_STATUS_ERROR:
            return local_error(ServerError, f"training failed: {self.last.message}")
        return None

    def _failed(self, exc: grpc.RpcError) -> errors.CuvisError | None:
        """The call failed: its domain error, or ``None`` when it is the cancel this client asked for."""
        self._finish()
        if self._cancelled and exc.code() is grpc.StatusCode.CANCELLED:
            return None
        return from_rpc_error(exc, "Train")

    def _cancelling(self) -> bool:
        """Mark the stream cancelled; False when it had already ended (nothing to cancel)."""
        if self._done:
            return False
        if not self._terminal:  # after the terminal message there is no run left to stop
            self._cancelled = True
        self._finish()
        return True

    def _finish(self) -> None:
        self._done = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None
