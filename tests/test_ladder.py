"""The immutability ladder: classification of boot actions and the derived step."""

from __future__ import annotations

import pytest

from imm.catalog.ladder import classify_boot_action, ladder_step


@pytest.mark.parametrize(
    "action",
    [
        "apt-get update && apt-get install -y nginx",
        "apt install -y python3",
        "yum install -y httpd",
        "dnf -y upgrade",
        "apk add --no-cache curl",
        "pip install -r requirements.txt",
        "pip3 install gunicorn==22.0",
        "npm ci",
        "yarn install --frozen-lockfile",
        "gem install bundler",
        "go install example.com/tool@latest",
        "git clone https://github.com/acme/app /srv/app",
        "curl -fsSL https://get.example.com/install.sh | sh",
        "wget -q https://releases.example.com/app-1.2.tar.gz",
        "docker pull registry.example.com/web:1.2",
        "podman pull quay.io/acme/app",
        "docker run --pull=always acme/app",
        "aws s3 cp s3://bucket/app.tar.gz /srv/",
        "gsutil cp gs://bucket/app.jar /srv/app.jar",
        "rsync -a deploy@build:/srv/app/ /srv/app/",
        "ansible-pull -U https://git.example.com/ops.git",
        "Download the latest release of the app",
        "install the monitoring agent",
        "fetch the app tarball from the build server",
        "curl https://169.254.169.254/latest/meta-data/ && curl https://example.com/x",
    ],
)
def test_fetching_actions(action: str) -> None:
    assert classify_boot_action(action) == "fetch"


@pytest.mark.parametrize(
    "action",
    [
        "render /etc/app.conf from template",
        "set hostname from instance metadata",
        "hostnamectl set-hostname $(cat /run/instance-id)",
        "export DATABASE_URL from environment",
        "read secrets from metadata and write /run/secrets/db",
        "fetch secrets from Vault",
        "register with consul",
        "envsubst < /etc/app.tmpl > /etc/app.conf",
        "systemctl enable --now app.service",
        "curl -s http://169.254.169.254/latest/meta-data/instance-id > /run/instance-id",
        "curl -H 'Metadata-Flavor: Google' http://metadata.google.internal/computeMetadata/v1/",
        "install -m 0600 /run/creds/db /etc/app/db.conf",
        "update-ca-certificates",
        "pull the TLS certificate from metadata",
    ],
)
def test_config_actions(action: str) -> None:
    assert classify_boot_action(action) == "config"


def layers(*roles: str) -> list[dict[str, str]]:
    return [{"role": r, "name": f"{r}x", "version": "1"} for r in roles]


@pytest.mark.parametrize(
    ("roles", "actions", "step"),
    [
        ((), [], 0),
        (("runtime", "app"), [], 0),  # without a baked OS nothing counts
        (("os",), ["apt-get install -y python3"], 1),
        (("os", "runtime"), [], 2),
        (("os", "runtime", "framework"), [], 2),
        (("os", "runtime", "app"), ["pip install -r requirements.txt"], 3),
        (("os", "runtime", "framework", "app"), ["render config", "curl https://x.io/a"], 3),
        (("os", "runtime", "app"), [], 4),
        (("os", "runtime", "framework", "app"), ["render /etc/app.conf", "set hostname"], 4),
    ],
)
def test_ladder_step(roles: tuple[str, ...], actions: list[str], step: int) -> None:
    assert ladder_step(layers(*roles), actions) == step


def test_ladder_step_accepts_role_names() -> None:
    assert ladder_step(["os", "runtime", "app"], []) == 4
    assert ladder_step(iter(["os", "runtime", "app"]), iter(["wget x"])) == 3


def test_ladder_docstring_states_the_rule() -> None:
    doc = ladder_step.__doc__ or ""
    for step in "01234":
        assert f"**{step}**" in doc
    assert "never allows step 4" in doc
