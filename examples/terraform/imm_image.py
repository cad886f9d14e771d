#!/usr/bin/env python3
"""The image id of an imm channel, for Terraform's ``external`` data source.

Terraform runs this program with the data source's ``query`` as a JSON object on stdin and
reads a JSON object of strings from stdout; on failure it shows stderr. One call to
``immctl channel resolve`` answers it: the channel's current image, its artifact in the
provider and region asked for, refused if the image is revoked.

    query  = { channel = "web/production", provider = "aws-prod", region = "us-east-1" }
    result = { image_id = "ami-...", image = "web@1.4.2", digest = "sha256:...", ... }

``socket`` in the query (or IMM_SOCKET in Terraform's environment) picks immd; ``immctl`` in
the query names the immctl to run (default: the one on PATH).
"""

from __future__ import annotations

import json
import subprocess
import sys


def main() -> int:
    try:
        query = json.load(sys.stdin)
    except ValueError as e:
        sys.stderr.write(f"imm_image: the query on stdin is not JSON: {e}\n")
        return 2
    if not isinstance(query, dict):
        query = {}
    missing = [k for k in ("channel", "provider") if not query.get(k)]
    if missing:
        sys.stderr.write(f"imm_image: the query needs {', '.join(missing)}: "
                         'e.g. { channel = "web/production", provider = "aws-prod", '
                         'region = "us-east-1" }\n')
        return 2
    cmd = [query.get("immctl") or "immctl", "channel", "resolve", query["channel"],
           "--provider", query["provider"], "--json"]
    if query.get("region"):
        cmd += ["--region", query["region"]]
    if query.get("socket"):
        cmd += ["--socket", query["socket"]]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        sys.stderr.write(f"imm_image: cannot run {cmd[0]}: {e}\n")
        return 1
    if done.returncode != 0:
        sys.stderr.write(done.stderr or done.stdout)
        return done.returncode
    r = json.loads(done.stdout)
    # Terraform's external data source takes a flat object of strings only
    result = {k: str(r[k]) for k in ("image_id", "image", "digest", "channel", "provider",
                                     "region", "seq", "ledger_index")}
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
