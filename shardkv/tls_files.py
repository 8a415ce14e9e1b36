"""A throwaway CA and one certificate for a local cluster (`shardkv
playground --tls`), made with trustme (X.509 issuing is its job, not ours)
and kept as PEM files under the cluster's directory, so a restarted
playground and its clients keep trusting the same CA.

For a local cluster only: the key files are written next to the data, and
one certificate (for 127.0.0.1 and localhost) serves every member. A real
cluster gets its certificates from its own CA (docs/deploy.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TlsFiles", "local_tls_files"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    def member_flags(self) -> dict[str, str]:
        """The PD's and a store's flags for them."""
        return {
            "--tls-cert-file": str(self.cert),
            "--tls-key-file": str(self.key),
            "--tls-ca-file": str(self.ca),
        }


def local_tls_files(directory: Path) -> TlsFiles:
    """The CA and member certificate under `directory`, made on first use."""
    files = TlsFiles(directory / "ca.pem", directory / "member.pem", directory / "member.key")
    if all(p.exists() for p in (files.ca, files.cert, files.key)):
        return files
    import trustme  # only here: the playground's --tls needs it, nothing else

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="shardkv playground")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(files.ca))
    cert.private_key_pem.write_to_path(str(files.key))
    files.key.chmod(0o600)
    for i, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(str(files.cert), append=i > 0)
    log.info("made a throwaway CA and certificate in %s", directory)
    return files
