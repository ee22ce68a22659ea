"""Generate a deployment kit for one federation: broker credentials, ACLs, config, env files.

    kit/
      README.txt          what goes where, step by step
      mosquitto.conf      gateway broker config (TLS listener, auth, ACLs, persistence)
      passwd              Mosquitto password file (PBKDF2-SHA512 hashes)
      acl                 per-node topic rights
      coordinator.env     coordinator credentials   -> gateway:/etc/mpfl/coordinator.env
      coordinator.key     its Ed25519 signing key   -> gateway:/etc/mpfl/coordinator.key
      enrolled.toml       the nodes' public keys    -> gateway:/etc/mpfl/enrolled.toml
      coordinator.pub     its public key            -> node:/etc/mpfl/coordinator.pub
      nodes/<id>.env      one node's credentials    -> node:/etc/mpfl/node.env
      nodes/<id>.key      its Ed25519 signing key   -> node:/etc/mpfl/node.key
      systemd/            the two service units
      certs/              empty: put ca.crt, server.crt, server.key here (see README.txt)

Each node may publish only under ``mpfl/v1/<fed>/nodes/<id>/`` and read ``server/``; the
coordinator reads ``nodes/`` and writes ``server/``. Passwords are random per run, so
re-provisioning (``force=True``) rotates every credential.

``credentials`` makes passwords, hashes and the ACL; ``templates`` renders the text files
from ``coordinator/deploy/``; ``kit`` writes them; ``cli`` is the command.
"""

from coordinator.provision.cli import provision_command
from coordinator.provision.credentials import (
    PBKDF2_ITERATIONS,
    Credentials,
    PasswordHasher,
    acl_text,
    mosquitto_password_hash,
    verify_mosquitto_password,
)
from coordinator.provision.kit import ProvisionResult, provision
from coordinator.provision.templates import (
    DEFAULT_BROKER_DIR,
    DEFAULT_CA_FILE,
    DEFAULT_PERSISTENCE_DIR,
    mosquitto_conf_text,
)

__all__ = [
    "DEFAULT_BROKER_DIR",
    "DEFAULT_CA_FILE",
    "DEFAULT_PERSISTENCE_DIR",
    "PBKDF2_ITERATIONS",
    "Credentials",
    "PasswordHasher",
    "ProvisionResult",
    "acl_text",
    "mosquitto_conf_text",
    "mosquitto_password_hash",
    "provision",
    "provision_command",
    "verify_mosquitto_password",
]
