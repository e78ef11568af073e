"""onnxruntime session options the service sets from its settings."""
from __future__ import annotations

import pytest

SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def _spinning(server) -> set[str]:
    options = server.app.repository.get("news").runtime.session.get_session_options()
    return {options.get_session_config_entry(key) for key in SPIN_KEYS}


def test_intra_op_spinning_is_off_by_default(server) -> None:
    # idle pool threads spinning for work take the CPU the event loop needs (docs/benchmarks.md)
    assert _spinning(server) == {"0"}


@pytest.mark.parametrize("spinning, expected", [(True, "1"), (False, "0")])
def test_intra_op_spinning_follows_the_setting(bundles, start_server, spinning: bool, expected: str) -> None:
    server = start_server(intra_op_spinning=spinning)
    assert _spinning(server) == {expected}
