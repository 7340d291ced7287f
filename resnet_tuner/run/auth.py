"""Who may talk to a distributed search's chief: a shared token and TLS.

keras-tuner's chief serves its oracle on a plaintext gRPC port that anyone
who can reach it may use. `Credentials` adds, with gRPC's own means:

* a shared token (`--token-file`, on the chief and every worker): a worker
  sends it as call metadata on every call (a client interceptor) and the
  chief compares it on every call in constant time (`hmac.compare_digest`,
  in a server interceptor); a call without it, or with another, is aborted
  with `UNAUTHENTICATED` and the chief logs the refused worker once;
* TLS: the chief listens with its certificate and key (`--tls-cert`,
  `--tls-key`) and workers check that certificate against a CA
  (`--tls-ca`), so the traffic is encrypted and workers know they talk to
  the chief.

What stays unprotected is written in the README ("Distributed search"): the
shared run directory is trusted, a token holder can report any score, and
workers have no identities of their own.

Example:
    >>> creds = Credentials(token_file="secret.txt", tls_ca="ca.pem")
    >>> creds.check("worker")  # raises on a missing or empty file
"""

from __future__ import annotations

import hmac
import ipaddress
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

#: Call metadata that carries the token (`Bearer <token>`), and the worker's name.
TOKEN_KEY, WORKER_KEY = "authorization", "x-resnet-tuner-worker"

#: `Credentials` field -> its command-line flag.
FLAGS = {"token_file": "--token-file", "tls_cert": "--tls-cert", "tls_key": "--tls-key",
         "tls_ca": "--tls-ca"}

__all__ = ["Credentials", "MetadataAdder", "OpenChiefWarning", "TokenCheck", "is_loopback",
           "read_token"]


class OpenChiefWarning(UserWarning):
    """A chief listens beyond this machine without a token."""


@dataclass(frozen=True)
class Credentials:
    """The token and TLS files of a chief or a worker (all optional).

    Attributes:
        token_file: file holding the shared secret (chief and workers).
        tls_cert, tls_key: the chief's PEM certificate and unencrypted key.
        tls_ca: the PEM certificate(s) a worker trusts to sign the chief's.
    """

    token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None

    @classmethod
    def from_args(cls, args) -> Credentials:
        """From parsed CLI arguments (`--token-file`, `--tls-*`; missing ones are None)."""
        return cls(**{name: getattr(args, name, None) for name in FLAGS})

    def given(self) -> list[str]:
        """The flags set, e.g. `["--token-file"]`."""
        return [flag for name, flag in FLAGS.items() if getattr(self, name)]

    def check(self, role: str | None) -> None:
        """Refuses flags that do not fit `role` and files that cannot be used.

        Args:
            role: `"chief"`, `"worker"` or None (not a distributed search).

        Raises:
            ValueError: a flag on the wrong side, a certificate without its
                key, an empty token or a PEM file that does not load.
            FileNotFoundError: a file that does not exist.
        """
        if self.given() and role is None:
            raise ValueError(f"{', '.join(self.given())} are for a distributed search: give "
                             "--chief HOST:PORT or --worker HOST:PORT too.")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together (the chief's certificate "
                             f"and its private key). Received: --tls-cert={self.tls_cert!r}, "
                             f"--tls-key={self.tls_key!r}")
        if role == "chief" and self.tls_ca:
            raise ValueError("--tls-ca is for workers (the CA that signed the chief's "
                             "certificate); the chief gives --tls-cert and --tls-key.")
        if role == "worker" and self.tls_cert:
            raise ValueError("--tls-cert and --tls-key are for the chief; a worker gives "
                             "--tls-ca CA.pem to check the chief's certificate.")
        self.token()
        if self.tls_cert:
            _check_key_pair(self.tls_cert, self.tls_key)
        if self.tls_ca:
            _check_ca(self.tls_ca)

    def token(self) -> str | None:
        """The shared secret (the token file's text, stripped), or None without a file."""
        return None if self.token_file is None else read_token(self.token_file)

    def add_port(self, server, address: str) -> int:
        """Opens `address` on a gRPC `server`, with TLS when the chief has a certificate."""
        if not self.tls_cert:
            return server.add_insecure_port(address)
        pair = (_read("--tls-key", self.tls_key), _read("--tls-cert", self.tls_cert))
        return server.add_secure_port(address, grpc.ssl_server_credentials([pair]))

    def server_interceptors(self, log: Callable[[str], None] = print) -> list:
        """The chief's interceptors: the token check when there is a token."""
        token = self.token()
        return [] if token is None else [TokenCheck(token, log)]

    def channel(self, address: str, worker_id: str | None = None):
        """A worker's channel to the chief: TLS with `tls_ca`, the token on every call."""
        if self.tls_ca:
            trusted = grpc.ssl_channel_credentials(root_certificates=_read("--tls-ca",
                                                                           self.tls_ca))
            channel = grpc.secure_channel(address, trusted)
        else:
            channel = grpc.insecure_channel(address)
        # gRPC metadata values are printable ASCII; a name that is not stays unsent
        sendable = worker_id and worker_id.isascii() and worker_id.isprintable()
        metadata = [(WORKER_KEY, worker_id)] if sendable else []
        token = self.token()
        if token is not None:
            metadata.append((TOKEN_KEY, f"Bearer {token}"))
        return grpc.intercept_channel(channel, MetadataAdder(metadata)) if metadata else channel

    def unreachable_hint(self, details: str) -> str:
        """What a worker's last connection error says about a TLS mismatch ('' if nothing)."""
        lowered = details.lower()
        if self.tls_ca and "certificate_verify_failed" in lowered:
            return (f" The chief's certificate is not signed by --tls-ca {self.tls_ca} or does "
                    "not name the host in --worker.")
        if self.tls_ca and "handshake" in lowered:
            return (" The chief does not speak TLS: it was started without --tls-cert, or drop "
                    "--tls-ca here.")
        if not self.tls_ca and "socket closed" in lowered:
            return (" The chief closes the connection: if it was started with --tls-cert, give "
                    "this worker --tls-ca.")
        return ""


def read_token(path: str | Path) -> str:
    """The token in `path`, stripped; a clear error for a missing, empty or binary one."""
    path = Path(path)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"--token-file {path} does not exist (write the shared secret "
                                f"in it, e.g. openssl rand -hex 32 > {path})") from None
    except (UnicodeDecodeError, IsADirectoryError):
        token = "\0"
    if not token:
        raise ValueError(f"--token-file {path} is empty: write the shared secret in it, e.g. "
                         f"openssl rand -hex 32 > {path}")
    if not (token.isascii() and token.isprintable()):
        raise ValueError(f"--token-file {path} must hold printable ASCII text (gRPC metadata), "
                         f"e.g. openssl rand -hex 32 > {path}")
    return token


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.x, ::1): unreachable from elsewhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def open_chief_warning(address: str) -> str:
    """What a chief without a token on a non-loopback address says once."""
    return (f"the chief at {address} listens beyond this machine without a token: anyone "
            "who can reach the port can steer the search (request trials, report scores, "
            "end it). Give the chief and its workers --token-file PATH (and TLS, --tls-cert "
            "and --tls-key on the chief and --tls-ca on workers, on untrusted networks).")


def _read(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(f"{flag} {path} does not exist or is not a file.") from None


def _check_key_pair(cert: str, key: str) -> None:
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        _read(flag, path)  # a missing file is named as such, not as a bad pair
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:  # the password callback keeps OpenSSL from prompting for an encrypted key
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as err:
        raise ValueError(f"--tls-cert {cert} and --tls-key {key} do not load as a PEM "
                         f"certificate and its unencrypted private key ({err.reason or err})."
                         ) from None


def _check_ca(ca: str) -> None:
    _read("--tls-ca", ca)
    try:
        ssl.create_default_context(cafile=ca)
    except ssl.SSLError as err:
        raise ValueError(f"--tls-ca {ca} holds no PEM certificate ({err.reason or err})."
                         ) from None


def _peer_host(peer: str) -> str:
    """`ipv4:10.0.0.5:53412` -> `10.0.0.5` (gRPC's peer strings carry the source port)."""
    _, _, address = peer.partition(":")
    host, sep, port = address.rpartition(":")
    return host if sep and port.isdigit() else peer


class _CallDetails(grpc.ClientCallDetails):
    """A call's details with `extra` metadata appended."""

    def __init__(self, details, extra: list[tuple[str, str]]):
        self.method, self.timeout = details.method, details.timeout
        self.credentials, self.wait_for_ready = details.credentials, details.wait_for_ready
        self.compression = getattr(details, "compression", None)
        self.metadata = [*(details.metadata or ()), *extra]


class MetadataAdder(grpc.UnaryUnaryClientInterceptor):
    """A worker's client interceptor: `metadata` on every call (the Oracle's are all unary)."""

    def __init__(self, metadata: list[tuple[str, str]]):
        self._metadata = list(metadata)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(_CallDetails(client_call_details, self._metadata), request)


class TokenCheck(grpc.ServerInterceptor):
    """The chief's server interceptor: every call must carry the token.

    A refused call ends with `UNAUTHENTICATED`; `log` hears once per peer
    host and reason (no token, a wrong one), not of each call, so a
    retrying worker, or one sending ever new names, cannot flood the log.
    """

    def __init__(self, token: str, log: Callable[[str], None] = print):
        self._expected = f"Bearer {token}".encode()
        self._log = log
        self._refused: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):
        metadata = dict(handler_call_details.invocation_metadata or ())
        sent = metadata.get(TOKEN_KEY)
        if sent is not None and hmac.compare_digest(str(sent).encode(), self._expected):
            return continuation(handler_call_details)
        reason = "sent no token" if sent is None else "sent a wrong token"
        return self._refusal(str(metadata.get(WORKER_KEY) or "")[:64], reason)

    def _refusal(self, worker: str, reason: str):
        told = ("this worker sent no token and the chief requires one" if reason ==
                "sent no token" else "this worker's token does not match the chief's")

        def refuse(request, context):
            self._note(_peer_host(context.peer()), worker, reason)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, told)

        return grpc.unary_unary_rpc_method_handler(refuse)

    def _note(self, host: str, worker: str, reason: str) -> None:
        with self._lock:
            if (host, reason) in self._refused:
                return
            self._refused.add((host, reason))
        who = f"worker {worker} at {host}" if worker else f"a client at {host}"
        self._log(f"chief: refused {who}: it {reason}; its calls are refused until it uses "
                  "the chief's --token-file")


