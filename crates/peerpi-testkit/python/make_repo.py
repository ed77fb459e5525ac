"""Builds a TUF repository with the reference implementation's Metadata API,
for peerpi's client to read. Consistent snapshots throughout.

The default layout is peerpi's: top-level targets delegating to hashed bins
by path_hash_prefixes. `--diamond` builds instead a role two roles delegate:
targets delegates every path to team-a and team-b; team-a delegates `a/*`
to `shared` with key S; team-b delegates every path to `shared` with its own
key; `shared` is signed with S only, so it is trusted through team-a and not
through team-b. Every target goes into `shared`. `--succinct BITS` delegates
to 2^BITS hashed bins named `bins-N` by TAP 15 `succinct_roles`, as the
index's PEP 458 deployment does.

usage: make_repo.py OUT_DIR KEYTYPE(ed25519|ecdsa) [--hash ALG]...
                    [--diamond | --succinct BITS] TARGET_PATH=CONTENT...
(TARGET_PATH=@FILE takes the target's bytes from FILE.)
"""

import argparse
import hashlib
import os
from datetime import datetime, timedelta, timezone

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

BINS = 16  # one hex digit per prefix


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("keytype", choices=["ed25519", "ecdsa"])
    ap.add_argument("--hash", action="append", dest="hashes",
                    help="hash algorithm of the targets (repeatable; default sha256)")
    ap.add_argument("--diamond", action="store_true")
    ap.add_argument("--succinct", type=int, metavar="BITS")
    ap.add_argument("targets", nargs="*", metavar="TARGET_PATH=CONTENT")
    args = ap.parse_intermixed_args()
    hashes = args.hashes or ["sha256"]
    generate = CryptoSigner.generate_ed25519 if args.keytype == "ed25519" else CryptoSigner.generate_ecdsa
    meta_dir = os.path.join(args.out, "metadata")
    os.makedirs(meta_dir)
    expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=7)
    signers = {role: generate() for role in ("root", "targets", "snapshot", "timestamp")}

    root = Root(expires=expires, consistent_snapshot=True)
    for role in ("root", "targets", "snapshot", "timestamp"):
        root.add_key(signers[role].public_key, role)

    # role name -> (Targets, signer); the top-level targets first.
    roles = {}
    if args.diamond:
        for name in ("team-a", "team-b", "shared-key", "team-b-shared-key"):
            signers[name] = generate()
        key = {name: signers[name].public_key for name in signers}

        def delegate(name, keyname, paths):
            return DelegatedRole(name, [key[keyname].keyid], 1, False, paths=paths)

        targets = Targets(expires=expires, delegations=Delegations(
            {key["team-a"].keyid: key["team-a"], key["team-b"].keyid: key["team-b"]},
            {"team-a": delegate("team-a", "team-a", ["*/*"]),
             "team-b": delegate("team-b", "team-b", ["*/*"])}))
        team_a = Targets(expires=expires, delegations=Delegations(
            {key["shared-key"].keyid: key["shared-key"]},
            {"shared": delegate("shared", "shared-key", ["a/*"])}))
        team_b = Targets(expires=expires, delegations=Delegations(
            {key["team-b-shared-key"].keyid: key["team-b-shared-key"]},
            {"shared": delegate("shared", "team-b-shared-key", ["*/*"])}))
        roles["targets"] = (targets, signers["targets"])
        roles["team-a"] = (team_a, signers["team-a"])
        roles["team-b"] = (team_b, signers["team-b"])
        roles["shared"] = (Targets(expires=expires), signers["shared-key"])

        def role_of(_path):
            return "shared"
    elif args.succinct:
        signers["bins"] = generate()
        bin_key = signers["bins"].public_key
        succinct = SuccinctRoles([bin_key.keyid], 1, args.succinct, "bins")
        delegations = Delegations({bin_key.keyid: bin_key}, roles=None, succinct_roles=succinct)
        roles["targets"] = (Targets(expires=expires, delegations=delegations), signers["targets"])
        for name in succinct.get_roles():
            roles[name] = (Targets(expires=expires), signers["bins"])
        role_of = succinct.get_role_for_target
    else:
        signers["bins"] = generate()
        bin_key = signers["bins"].public_key
        delegated = {}
        for i in range(BINS):
            name = f"bin-{i:x}"
            delegated[name] = DelegatedRole(name, [bin_key.keyid], 1, True, path_hash_prefixes=[f"{i:x}"])
        targets = Targets(expires=expires, delegations=Delegations({bin_key.keyid: bin_key}, delegated))
        roles["targets"] = (targets, signers["targets"])
        for name in delegated:
            roles[name] = (Targets(expires=expires), signers["bins"])

        def role_of(path):
            return f"bin-{hashlib.sha256(path.encode()).hexdigest()[0]}"

    for spec in args.targets:
        path, content = spec.split("=", 1)
        if content.startswith("@"):
            with open(content[1:], "rb") as f:
                data = f.read()
        else:
            data = content.encode()
        target = TargetFile.from_data(path, data, hashes)
        roles[role_of(path)][0].targets[path] = target
        directory, _, name = path.rpartition("/")
        # Published under each hash's name, as a repository does, so that a
        # client may name the file by any of them.
        for digest in target.hashes.values():
            dest = os.path.join(args.out, "targets", directory, f"{digest}.{name}")
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
    for name, (role, signer) in roles.items():
        data = write(role, signer, f"1.{name}.json")
        snapshot.meta[f"{name}.json"] = MetaFile(1, len(data))
    data = write(snapshot, signers["snapshot"], "1.snapshot.json")
    timestamp = Timestamp(expires=expires, snapshot_meta=MetaFile(1, len(data), {"sha256": hashlib.sha256(data).hexdigest()}))
    write(timestamp, signers["timestamp"], "timestamp.json")
    write(root, signers["root"], "1.root.json")


if __name__ == "__main__":
    main()
