"""Downloads one target with the reference implementation's client
(tuf.ngclient.Updater) and prints the path of the verified file.

usage: ngclient_download.py METADATA_URL TARGETS_URL TRUSTED_ROOT TARGET WORK_DIR
"""

import os
import sys

from tuf.ngclient import Updater


def main() -> None:
    metadata_url, targets_url, trusted_root, target, work = sys.argv[1:]
    metadata_dir = os.path.join(work, "metadata")
    target_dir = os.path.join(work, "targets")
    os.makedirs(metadata_dir, exist_ok=True)
    os.makedirs(target_dir, exist_ok=True)
    with open(trusted_root, "rb") as f:
        root = f.read()
    updater = Updater(metadata_dir, metadata_url, target_dir, targets_url, bootstrap=root)
    updater.refresh()
    info = updater.get_targetinfo(target)
    if info is None:
        sys.exit(f"{target}: not found")
    print(updater.download_target(info))


if __name__ == "__main__":
    main()
