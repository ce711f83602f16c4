"""Data keys wrapped by the transit engine of HashiCorp Vault or OpenBao (same API).

The master key stays in Vault: ``wrap`` sends a data key to ``<mount>/encrypt/<key>`` and
keeps the ``vault:vN:…`` ciphertext, ``unwrap`` sends it back to ``<mount>/decrypt/<key>``.
The key id is bound as AEAD associated data, so a wrapped key moved to another id does
not open. Rotating the transit key in Vault keeps every older version able to decrypt.
The token comes from an environment variable; the connection is HTTPS only.
"""

from __future__ import annotations

import base64
import os
import ssl

import httpx

from secure_etl.config import VaultTransitKms
from secure_etl.errors import UserError
from secure_etl.security.key_provider import KeyUnwrapError


class VaultError(UserError):
    """Vault could not be reached, refused the token, or answered something unexpected."""


class VaultTransit:
    def __init__(
        self,
        address: str,
        key: str,
        token: str,
        mount: str = "transit",
        namespace: str | None = None,
        ca_bundle: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if not address.startswith("https://"):
            raise VaultError(f"{address}: Vault is only spoken to over https")
        headers = {"X-Vault-Token": token}
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        self.address, self.key, self.mount = address.rstrip("/"), key, mount.strip("/")
        self._http = httpx.Client(
            base_url=f"{self.address}/v1/{self.mount}/",
            headers=headers,
            verify=ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True,
            timeout=timeout_s,
        )

    @classmethod
    def from_config(cls, config: VaultTransitKms) -> VaultTransit:
        token = os.environ.get(config.token_env)
        if not token:
            raise VaultError(
                f"kms.token_env: the environment variable {config.token_env} "
                "(the Vault token) is not set"
            )
        return cls(
            config.address,
            config.key,
            token,
            config.mount,
            config.namespace,
            config.ca_bundle,
            config.timeout_s,
        )

    def wrap(self, key: bytes, key_id: str) -> str:
        data = self._call("encrypt", {"plaintext": _b64(key), "associated_data": _b64(key_id)})
        ciphertext = data.get("ciphertext")
        if not isinstance(ciphertext, str) or not ciphertext.startswith("vault:"):
            raise VaultError(f"{self._where('encrypt')}: no ciphertext in the answer")
        return ciphertext

    def unwrap(self, wrapped: str, key_id: str) -> bytes:
        try:
            data = self._call("decrypt", {"ciphertext": wrapped, "associated_data": _b64(key_id)})
        except _Refused as err:  # Vault says 400 for a ciphertext that does not open
            raise KeyUnwrapError(
                f"{self._where('decrypt')}: cannot unwrap the key for {key_id!r}: {err}"
            ) from None
        try:
            return base64.b64decode(data["plaintext"], validate=True)
        except (KeyError, TypeError, ValueError):
            raise VaultError(f"{self._where('decrypt')}: no plaintext in the answer") from None

    def close(self) -> None:
        self._http.close()

    def _where(self, operation: str) -> str:
        return f"{self.address}/v1/{self.mount}/{operation}/{self.key}"

    def _call(self, operation: str, body: dict) -> dict:
        where = self._where(operation)
        try:
            response = self._http.post(f"{operation}/{self.key}", json=body)
        except httpx.HTTPError as err:
            raise VaultError(f"{where}: {err}") from None
        if response.status_code == 400:
            raise _Refused(_errors(response))
        if response.status_code in (401, 403):
            raise VaultError(
                f"{where}: permission denied ({_errors(response)}); check the token and its policy"
            )
        if response.status_code != 200:
            raise VaultError(f"{where}: HTTP {response.status_code}: {_errors(response)}")
        try:
            return response.json()["data"]
        except (ValueError, KeyError, TypeError):
            raise VaultError(f"{where}: the answer is not Vault's JSON") from None


class _Refused(VaultError):
    pass


def _b64(value: bytes | str) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


def _errors(response: httpx.Response) -> str:
    try:
        return "; ".join(response.json().get("errors") or []) or response.reason_phrase
    except ValueError:
        return response.reason_phrase
