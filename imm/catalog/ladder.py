"""The immutability ladder: how much of an image is baked, and how much happens at boot.

An image climbs the ladder by baking more of what it runs into the image itself, leaving less
for boot time, where a download or install can fail, drift or differ between two instances of
the same image. A channel or service may require a minimum step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

ROLES = ("os", "runtime", "framework", "app")

BootActionKind = Literal["fetch", "config"]

# Commands and words that bring software or data onto the instance at boot. Matched as whole
# words, case-insensitive, anywhere in the action's text.
_FETCH_WORDS = (
    # package managers and installers
    r"apt(?:-get|itude)?", r"yum", r"dnf", r"microdnf", r"zypper", r"pacman", r"apk\s+add",
    r"emerge", r"brew", r"snap\s+install", r"flatpak", r"rpm\s+-[a-z]*[iu]", r"dpkg\s+-i",
    r"pip[0-9.]*", r"pipx", r"uv\s+(?:pip|sync|tool)", r"poetry\s+install", r"conda", r"mamba",
    r"easy_install", r"npm", r"npx", r"yarn", r"pnpm", r"bun\s+(?:install|add)",
    r"gem\s+install", r"bundle(?:r)?\s+install", r"cargo\s+(?:install|build|fetch)",
    r"go\s+(?:get|install|mod\s+download)", r"composer", r"mvn", r"gradle", r"cpanm?",
    r"nuget", r"choco", r"winget", r"helm\s+(?:install|upgrade|pull|repo)",
    # source and artifact transfer
    r"git\s+(?:clone|pull|fetch|submodule)", r"svn\s+(?:checkout|co|update|export)",
    r"hg\s+(?:clone|pull)", r"curl", r"wget", r"aria2c", r"scp", r"rsync", r"sftp", r"ftp",
    r"aws\s+s3", r"s3cmd", r"gsutil", r"gcloud\s+storage", r"azcopy", r"az\s+storage",
    r"rclone", r"oras\s+pull",
    # container images
    r"(?:docker|podman|nerdctl|crictl|ctr)\s+(?:image\s+)?pull", r"skopeo\s+copy",
    r"--pull(?:=always|\s+always)",
    # configuration management converging a machine at boot
    r"ansible(?:-playbook|-pull)?", r"chef-client", r"chef-solo", r"puppet\s+apply",
    r"puppet\s+agent", r"salt-call",
    # plain words operators write in descriptions
    r"download(?:s|ed|ing)?", r"install(?:s|ed|ing)?", r"upgrade(?:s|d)?",
    r"fetch(?:es|ed|ing)?", r"pull(?:s|ed|ing)?", r"clone(?:s|d)?",
)
_FETCH = re.compile(r"(?<![\w-])(?:" + "|".join(_FETCH_WORDS) + r")(?![\w-])", re.IGNORECASE)

# coreutils ``install -m 0644 SRC DST`` copies a local file: that is config, not a fetch.
_COREUTILS_INSTALL = re.compile(r"(?<![\w-])install\s+-[-a-zA-Z]", re.IGNORECASE)

# Fetching from the instance metadata service reads per-instance values: that is config.
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"|;&)]+", re.IGNORECASE)
_METADATA_URL = re.compile(
    r"^https?://(?:169\.254\.169\.254|169\.254\.170\.2|\[fd00:ec2::254\]|metadata\.google\.internal"
    r"|metadata|100\.100\.100\.200)(?::\d+)?(?:/|$)",
    re.IGNORECASE,
)
# "Soft" fetch words may name a read of per-instance values rather than of software.
_SOFT = re.compile(
    r"curl|wget|fetch(?:es|ed|ing)?|pull(?:s|ed|ing)?|download(?:s|ed|ing)?", re.IGNORECASE
)
_PER_INSTANCE = re.compile(
    r"(?<![\w-])(?:secrets?|credentials?|tokens?|passwords?|certificates?|certs?|keys?"
    r"|metadata|user-?data|hostname|instance[ -]id|tags?)(?![\w-])",
    re.IGNORECASE,
)


def classify_boot_action(text: str) -> BootActionKind:
    """``"fetch"`` if a boot action brings software or data onto the instance, else ``"config"``.

    ``fetch``: package managers (apt, yum, dnf, apk, pip, npm, gem, cargo, go get, ...), source
    and artifact transfers (git clone, curl, wget, rsync, aws s3, gsutil, ...), container pulls,
    configuration-management runs (ansible, chef, puppet, salt), and the words download,
    install, upgrade, fetch, pull and clone.

    ``config``: everything else — setting per-instance values (hostname, environment, templated
    config files, secrets read from the metadata service, registering with discovery). Where
    the only fetch words are curl, wget, fetch, pull or download, the action is ``config`` when
    every URL in it is the instance metadata service (169.254.169.254,
    metadata.google.internal, ...), or, with no URL at all, when it names per-instance values
    (secrets, credentials, tokens, certificates, keys, metadata, user data, hostname, instance
    id, tags): "fetch secrets from Vault" is config, "fetch the app tarball" is not. Coreutils
    ``install -m MODE SRC DST`` (a local copy) is ``config`` too.

    When in doubt a word counts as a fetch: a wrong "fetch" only lowers an image's ladder step,
    a wrong "config" would let a mutable image claim step 4.
    """
    stripped = _COREUTILS_INSTALL.sub(" ", text)
    matches = {m.group(0).lower() for m in _FETCH.finditer(stripped)}
    if not matches:
        return "config"
    if all(_SOFT.fullmatch(m) for m in matches):
        urls = _URL.findall(stripped)
        if urls:
            if all(_METADATA_URL.match(u) for u in urls):
                return "config"
        elif _PER_INSTANCE.search(stripped):
            return "config"
    return "fetch"


def ladder_step(
    layers: Iterable[Mapping[str, Any] | str], boot_actions: Iterable[str]
) -> int:
    """The image's step on the immutability ladder, 0 to 4.

    - **0** — nothing baked: no ``os`` layer declared.
    - **1** — the ``os`` is baked; the runtime and the app arrive at boot.
    - **2** — ``os`` and ``runtime`` are baked (a ``framework`` layer may be too); the app
      arrives at boot.
    - **3** — ``os``, ``runtime`` and ``app`` are baked (``framework`` optional), but at least
      one boot action still fetches or installs something.
    - **4** — ``os``, ``runtime`` and ``app`` are baked and every boot action only sets
      per-instance values (see :func:`classify_boot_action`). Fully baked.

    A fetching boot action never allows step 4. Layers are manifest layer dicts (with a
    ``"role"``) or bare role names.
    """
    roles = {layer if isinstance(layer, str) else layer.get("role") for layer in layers}
    if "os" not in roles:
        return 0
    if "runtime" not in roles:
        return 1
    if "app" not in roles:
        return 2
    if any(classify_boot_action(action) == "fetch" for action in boot_actions):
        return 3
    return 4
