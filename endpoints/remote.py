"""A router's link to the studio when it runs where the studio's database is not: inside
a cluster, installed with the extension (`enableInference`). It asks the studio for an
endpoint's routing table (endpoints.api.router, with the cluster's router token) and
sends its per-second counts back, so the autoscaler and the charts see its traffic as
they see the studio's own router's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from endpoints.router import ROUTER, Table
from endpoints.traffic import RECORDER, Ended


class Studio:
    def __init__(self, url: str, token: str, verify: bool | str = True) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/") + "/api/v1/router/",
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
            verify=verify,
        )

    def table(self, name: str) -> Table | None:
        answer = self.http.get(f"endpoints/{name}/")
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return Table.from_json(answer.json())

    def send(self, router: str, ended: Ended) -> None:
        """The seconds that ended, as the database writer would keep them."""
        seconds = [
            {"at": datetime.fromtimestamp(at, UTC).isoformat(), "deployment": pk,
             "codes": dict(second.codes), "latency": second.latency, "busy": second.busy,
             "replicas": second.replicas}
            for at, per_deployment in ended
            for pk, second in per_deployment.items()
        ]  # fmt: skip
        if seconds:
            self.http.post(
                "traffic/", json={"router": router, "seconds": seconds}
            ).raise_for_status()


def use(studio: Studio) -> None:
    """This process's router takes its tables from the studio and reports to it. A
    Service's address does not change in a rollout: no instance list to refresh."""
    ROUTER.source = studio.table
    ROUTER.urls_of = lambda _pk: []
    RECORDER.write = studio.send


def self_signed(name: str, folder: Path) -> tuple[str, str]:
    """A certificate for `name` and its key, made now (the router's TLS when IT-ops gave
    no sslSecret): clients must trust it by pinning or skip checking, as with Azure's
    router before a real certificate is set."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)
