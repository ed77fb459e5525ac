"""Builds a TUF repository with the reference implementation's Metadata API,
shaped like peerpi's (consistent snapshots, top-level targets delegating to
hashed bins by path_hash_prefixes), for peerpi's client to read.

usage: make_repo.py OUT_DIR KEYTYPE(ed25519|ecdsa) TARGET_PATH=CONTENT...
"""

import hashlib
import os
import sys
from datetime import datetime, timedelta, timezone

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

BINS = 16  # one hex digit per prefix


def main() -> None:
    out, keytype, *specs = sys.argv[1:]
    generate = CryptoSigner.generate_ed25519 if keytype == "ed25519" else CryptoSigner.generate_ecdsa
    meta_dir = os.path.join(out, "metadata")
    os.makedirs(meta_dir)
    expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=7)
    signers = {role: generate() for role in ("root", "targets", "snapshot", "timestamp", "bins")}

    root = Root(expires=expires, consistent_snapshot=True)
    for role in ("root", "targets", "snapshot", "timestamp"):
        root.add_key(signers[role].public_key, role)

    bin_key = signers["bins"].public_key
    roles = {}
    for i in range(BINS):
        name = f"bin-{i:x}"
        roles[name] = DelegatedRole(name, [bin_key.keyid], 1, True, path_hash_prefixes=[f"{i:x}"])
    targets = Targets(expires=expires, delegations=Delegations({bin_key.keyid: bin_key}, roles))

    bins = {name: Targets(expires=expires) for name in roles}
    for spec in specs:
        path, content = spec.split("=", 1)
        data = content.encode()
        digest = hashlib.sha256(path.encode()).hexdigest()
        bins[f"bin-{digest[0]}"].targets[path] = TargetFile.from_data(path, data, ["sha256"])
        directory, _, name = path.rpartition("/")
        sha = hashlib.sha256(data).hexdigest()
        dest = os.path.join(out, "targets", directory, f"{sha}.{name}")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(data)

    def write(signed, signer, filename):
        md = Metadata(signed)
        md.sign(signer)
        data = md.to_bytes(JSONSerializer(compact=False))
        with open(os.path.join(meta_dir, filename), "wb") as f:
            f.write(data)
        return data

    snapshot = Snapshot(expires=expires)
    for name, role in bins.items():
        data = write(role, signers["bins"], f"1.{name}.json")
        snapshot.meta[f"{name}.json"] = MetaFile(1, len(data))
    data = write(targets, signers["targets"], "1.targets.json")
    snapshot.meta["targets.json"] = MetaFile(1, len(data))
    data = write(snapshot, signers["snapshot"], "1.snapshot.json")
    timestamp = Timestamp(expires=expires, snapshot_meta=MetaFile(1, len(data), {"sha256": hashlib.sha256(data).hexdigest()}))
    write(timestamp, signers["timestamp"], "timestamp.json")
    write(root, signers["root"], "1.root.json")


if __name__ == "__main__":
    main()
