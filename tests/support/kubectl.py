"""Helpers of the e2e tests that drive a cluster from outside: ``kubectl`` and polling.

``kubectl`` runs the cluster's own kubectl (the local cluster's build, or one on PATH)
against the Target's kubeconfig; ``wait_for`` polls a check until it holds, failing with
what it waited for, so a test waits for a state instead of racing it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from secure_keys_dev.cluster import Binaries
from tests.e2e.conftest import Target


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def kubectl(kube: Target, *args: str) -> subprocess.CompletedProcess[str]:
    if kube.cluster is not None:
        binary = str(kube.cluster.binaries.kubectl)
    else:
        binary = shutil.which("kubectl") or str(Binaries.find().kubectl)
    return subprocess.run(  # noqa: S603 - our kubectl, our arguments
        [binary, f"--kubeconfig={kube.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
