from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EDUAIQ_DATABASE_URL", "mysql://root@localhost/x"),
        ("EDUAIQ_DATABASE_URL", "postgresql://host-without-db"),
        ("EDUAIQ_REDIS_URL", "http://127.0.0.1:6379"),
        ("EDUAIQ_KAFKA_BOOTSTRAP", "broker-without-port"),
        ("EDUAIQ_RESERVATION_TTL_SECONDS", "soon"),
    ],
)
def test_bad_setting_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"bad setting {name}:")


@given(
    st.lists(
        st.tuples(st.from_regex(r"[a-z][a-z0-9.\-]{0,20}", fullmatch=True), st.integers(1, 65535)),
        min_size=1,
        max_size=4,
    )
)
def test_any_host_port_list_is_a_valid_bootstrap(pairs: list[tuple[str, int]]) -> None:
    value = ",".join(f"{h}:{p}" for h, p in pairs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDUAIQ_KAFKA_BOOTSTRAP", value)
        assert load_settings().kafka_bootstrap == value
