"""Failpoints: named places where a test can make the controller die, as etcd's gofail does.

``failpoint("blob-written")`` does nothing unless the name is listed in the
``SECUREKEYS_FAILPOINTS`` environment variable of the process, in which case the process
exits at once with status 86: no ``finally`` blocks, no flushing, like a SIGKILL or an
OOM kill at that instruction. The crash-recovery tests run the controller in a
subprocess with one failpoint armed, then restart it without.
"""

from __future__ import annotations

import os

CRASH_EXIT_STATUS = 86

CRASH_POINTS = (
    "before-blob-write",  # a new version is sealed in memory; nothing written yet
    "blob-written",  # its blob is in the Secret; status does not know it
    "pending-recorded",  # status records it as Pending
    "promoted",  # status made it Active and the previous one Archived
    "destroy-recorded",  # status marks an expired version Destroyed; blob still there
    "blobs-deleted",  # the Destroyed version's blob is gone from the Secret
)
"""Every failpoint in a rotation, in the order a rotation reaches them."""
_ENV = "SECUREKEYS_FAILPOINTS"


def armed() -> frozenset[str]:
    return frozenset(filter(None, os.environ.get(_ENV, "").split(",")))


_ARMED = armed()


def failpoint(name: str) -> None:
    if name in _ARMED:
        os._exit(CRASH_EXIT_STATUS)
