"""The chart's spool volume and the spool's cap agree: the spool refuses before the kubelet evicts the pod."""

from __future__ import annotations

import re

import pytest

from core.settings import Settings
from usage.spool import WAL_LIMIT_BYTES

pytest.importorskip("helm_python", reason="helm-python-sdk renders the chart offline")

from tests.helm.helm_chart import containers, env_of, pod_template, render_chart

_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMG]i)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * _UNITS[unit]


@pytest.mark.parametrize("megabytes", [None, 300])
def test_the_spool_empty_dir_is_sized_above_the_spool_cap(megabytes: int | None) -> None:
    values = {} if megabytes is None else {"gateway": {"spool": {"maxMegabytes": megabytes}}}
    gateway = render_chart(values).workload("gateway")
    (container,) = containers(gateway)
    env = env_of(container)
    cap = int(env["EDUAIQ_SPOOL_MAX_BYTES"]["value"])
    Settings(spool_max_bytes=cap)  # a value the gateway accepts
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == env["EDUAIQ_SPOOL_DIR"]["value"])
    volume = next(v for v in pod_template(gateway)["spec"]["volumes"] if v["name"] == mount["name"])
    limit = _bytes(volume["emptyDir"]["sizeLimit"])
    # The database file stops at the cap; the write-ahead log is truncated to WAL_LIMIT_BYTES after each
    # checkpoint and grows by at most one batch in between: both fit under the volume's limit.
    assert cap + 4 * WAL_LIMIT_BYTES < limit
    if megabytes is not None:
        assert cap == megabytes * 1024**2


def test_setting_the_cap_through_settings_is_refused() -> None:
    with pytest.raises(Exception, match=r"gateway\.spool\.maxMegabytes"):
        render_chart({"settings": {"spool_max_bytes": 1}})
