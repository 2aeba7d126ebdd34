"""The SDK's retry policy against a real gateway that is killed and restarted while calls are open.

* Idempotent calls made while the gateway is down wait for it (the service config's waitForReady) and
  succeed once it is back; the session itself lives on the worker and keeps working.
* Non-idempotent calls fail fast with UNAVAILABLE instead of waiting or being repeated.
* A Train stream that is running when the gateway dies ends with UNAVAILABLE; it is not started again:
  the worker reports the run CANCELLED and no second run appears.
"""

from __future__ import annotations

import threading
import time

import pytest
from clusters import start_cluster

from cuvis_cluster import errors
from cuvis_cluster.client import connect, pb

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = ["data.params.height=16", "data.params.width=16"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = start_cluster(tmp_path_factory.mktemp("restart"), workers=1)
    yield running
    running.stop()


def _wait_status(session, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    status = session.train_status()
    while not predicate(status) and time.monotonic() < deadline:
        time.sleep(0.2)
        status = session.train_status()
    return status


def test_idempotent_calls_wait_for_the_restarted_gateway(cluster):
    with connect(cluster.address, timeout=90) as client, client.create_session() as session:
        session.configure_trainrun("rx_statistical", SMALL)
        assert session.train(progress=False).wait().status == pb.TRAIN_STATUS_COMPLETE

        cluster.kill_gateway()
        results: dict[str, object] = {}

        def idempotent_calls() -> None:
            try:
                results["inputs"] = session.inputs()
                results["pipelines"] = client.list_pipelines()
                results["resolved"] = session.resolve_trainrun("rx_statistical", SMALL)
            except Exception as exc:
                results["error"] = exc

        caller = threading.Thread(target=idempotent_calls)
        caller.start()
        time.sleep(1.0)
        assert caller.is_alive(), f"the call did not wait for the gateway: {results}"
        with pytest.raises(errors.Unavailable):
            client.create_session()  # not idempotent: fails at once rather than waiting or repeating

        cluster.start_gateway(name="gateway-restarted")
        caller.join(90)
        assert not caller.is_alive()
        assert "error" not in results, results.get("error")
        assert "cube" in results["inputs"]
        assert any(p.pipeline_path == "rx_statistical.yaml" for p in results["pipelines"])
        assert results["resolved"]["name"] == "rx_statistical"
        # The session lived on the worker and its route in Redis: it works through the new gateway.
        status = session.train_status()
        assert status.status == pb.TRAIN_STATUS_COMPLETE


def test_train_in_flight_surfaces_unavailable_and_is_not_rerun(cluster):
    with connect(cluster.address, timeout=90) as client:
        client.wait_until_ready(60)
        with client.create_session() as session:
            overrides = [*SMALL, "training.max_epochs=10000"]
            session.configure_trainrun("channel_selector", overrides)
            session.train("statistical", progress=False).wait()
            stream = session.train("gradient", progress=False)
            received = []
            with pytest.raises(errors.Unavailable) as info:
                for resp in stream:
                    received.append(resp)
                    if len(received) == 3:
                        cluster.kill_gateway()
            assert info.value.method == "Train"
            last_step = received[-1].context.global_step

            cluster.start_gateway(name="gateway-after-train")
            client.wait_until_ready(60)
            status = _wait_status(session, lambda s: s.status != pb.TRAIN_STATUS_RUNNING)
            assert status.status == pb.TRAIN_STATUS_CANCELLED, status
            time.sleep(1.0)
            again = session.train_status()
            assert again.status == pb.TRAIN_STATUS_CANCELLED  # nothing restarted the run
            assert again.context.global_step >= last_step  # the same run, not a fresh one from step 0
            # The session takes new calls: training is not running any more.
            session.configure_trainrun("channel_selector", [*SMALL, "training.trainer.max_epochs=1"])
