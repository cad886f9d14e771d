"""imm/plugins/cloud/terminate.py: what every cloud provider checks before it terminates."""

from __future__ import annotations

import logging

import pytest

from imm.errors import BadRequest
from imm.plugins.cloud.terminate import screen

LOG = logging.getLogger("test")


def test_gone_ids_are_logged_not_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "test"):
        screen("aws aws-prod", ["i-2", "i-1", "i-3"], {"i-3": {"imm:service": "web"}},
               terminate_untagged=False, log=LOG)
    assert caplog.messages == ["aws aws-prod: i-1, i-2 already gone"]


def test_untagged_instances_are_refused_by_name_unless_allowed() -> None:
    tags = {"i-1": {"imm:service": "web"}, "i-9": {}, "i-8": {"Name": "pet"}}
    with pytest.raises(BadRequest) as e:
        screen("openstack os", list(tags), tags, terminate_untagged=False, log=LOG,
               marked_by="metadata", verb="delete")
    assert e.value.message == (
        "openstack os: refusing to delete i-8, i-9: no imm:service metadata, so imm did not "
        "launch them (set terminate_untagged = true on the provider to allow it)")
    screen("openstack os", list(tags), tags, terminate_untagged=True, log=LOG)
