"""A real KMS provider, observed and steerable: the provider that tests and benches use.

``ObservedKms`` forwards every call to the provider it wraps (normally the real ``local``
provider, so every byte is really wrapped and unwrapped) and adds what a test needs to see
and do: it counts the wraps and unwraps that reach it, and ``down`` / ``denied`` make it
answer as an unreachable KMS (``KmsUnavailable``) or one that refuses the key
(``KmsDenied``). ``ObservedReencryptingKms`` also re-encrypts inside "the KMS", as AWS
KMS's ``ReEncrypt`` does, and counts those calls.

It is shipped in the package, beside the providers it stands in front of, so the unit
tests and the benchmarks share one definition instead of each writing its own; it is not
in the registry, so no ``--kms-config`` can name it.
"""

from __future__ import annotations

from secure_keys.core.binding import WrapContext
from secure_keys.core.errors import KmsDenied, KmsUnavailable
from secure_keys.core.kms.base import HealthStatus, KmsProvider, WrappedKey
from secure_keys.core.memory import zero

__all__ = ["ObservedKms", "ObservedReencryptingKms"]


class ObservedKms:
    """``inner``, counted: ``wraps`` and ``unwraps`` count the calls that reached it
    (refused ones included). Set ``down`` or ``denied`` to make every wrap and unwrap fail
    as an unreachable or refusing KMS would."""

    def __init__(self, inner: KmsProvider) -> None:
        self.inner = inner
        self.wraps = 0
        self.unwraps = 0
        self.down = False
        self.denied = False

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def key_id(self) -> str:
        return self.inner.key_id

    def key_version(self) -> str:
        return self.inner.key_version()

    def health(self) -> HealthStatus:
        return self.inner.health()

    def _gate(self) -> None:
        if self.down:
            raise KmsUnavailable(self.name, self.key_id, "stopped")
        if self.denied:
            raise KmsDenied(self.name, self.key_id, "disabled")

    def wrap(self, dek: bytes | bytearray, context: WrapContext) -> WrappedKey:
        self.wraps += 1
        self._gate()
        return self.inner.wrap(dek, context)

    def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
        self.unwraps += 1
        self._gate()
        return self.inner.unwrap(wrapped, context)


class ObservedReencryptingKms(ObservedKms):
    """``ObservedKms`` whose KMS re-encrypts a wrapped key itself (a
    ``ReencryptingProvider``); ``reencrypts`` counts the calls. The data key passes
    through this process only inside the call, and is zeroed there."""

    def __init__(self, inner: KmsProvider) -> None:
        super().__init__(inner)
        self.reencrypts = 0

    def reencrypt(self, wrapped: WrappedKey, context: WrapContext) -> WrappedKey:
        self.reencrypts += 1
        self._gate()
        dek = self.inner.unwrap(wrapped, context)
        try:
            return self.inner.wrap(dek, context)
        finally:
            zero(dek)
