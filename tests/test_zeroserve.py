"""The ``zeroserve`` CLI and the local runtime's spec handling, in this process (no replicas)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from zeroserve import cli
from zeroserve.cli import main
from zeroserve.runtime import LocalRuntime, RuntimeSettings

SERVICES = "services:\n  - name: iris\n    revisions: [{name: v1, command: [python, -c, pass]}]\n"
BAD_CONFIG = 'config: {stable-window: 3s, max-scale-up-rate: "0.5"}\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_validate_rejects_an_invalid_config_naming_each_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BAD_CONFIG + SERVICES)
    assert main(["validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{path}: config.stable-window = 3s: must be within [6s, 1h]" in err
    assert f"{path}: config.max-scale-up-rate = 0.5: must be greater than 1" in err


def test_validate_accepts_a_valid_config_and_warns_of_unknown_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "config: {stable-window: 30s, stable_window: 3s}\n" + SERVICES)
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: ok (1 services)\n"
    assert "config.stable_window: not a config-autoscaler key (ignored)" in err


def test_validate_applies_the_cross_key_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "config: {min-scale: 5, max-scale: 2}\n" + SERVICES)
    assert main(["validate", str(path)]) == 1
    assert "config.min-scale = 5: must be within [0, 2] (max-scale)" in capsys.readouterr().err


async def test_reload_with_a_rejected_config_keeps_the_last_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "config: {stable-window: 30s}\n" + SERVICES)
    rt = LocalRuntime(path, RuntimeSettings(watch_spec_s=0))
    caplog.set_level(logging.INFO, logger="zeroserve")
    path.write_text(BAD_CONFIG + SERVICES.replace("v1", "v2"))
    assert rt.reload() is False
    messages = [r.getMessage() for r in caplog.records if r.name == "zeroserve.runtime"]
    assert "spec applied" not in messages
    assert messages == ["spec rejected, keeping the last good one"]
    error = str(caplog.records[-1].__dict__["error"])
    assert "config.stable-window = 3s" in error
    assert "config.max-scale-up-rate = 0.5" in error
    # Nothing of the rejected file is in force: the config and the revisions are the old ones.
    assert dict(rt.config.current()) == {"stable-window": "30s"}
    assert [k.name for k in rt.revisions.current()] == ["v1"]


def test_runtime_refuses_an_invalid_spec_at_start(tmp_path: Path) -> None:
    from cluster.spec_loader import SpecError

    path = write(tmp_path, BAD_CONFIG + SERVICES)
    with pytest.raises(SpecError, match=r"config\.stable-window = 3s"):
        LocalRuntime(path, RuntimeSettings(watch_spec_s=0))


def test_runtime_logs_each_unknown_config_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="zeroserve")
    path = write(tmp_path, "config: {stable_window: 3s, panic-window: 6s}\n" + SERVICES)
    LocalRuntime(path, RuntimeSettings(watch_spec_s=0))
    warnings = [r.__dict__["warning"] for r in caplog.records if r.msg == "config key ignored"]
    assert warnings == [
        "config.panic-window: not a config-autoscaler key (ignored)",
        "config.stable_window: not a config-autoscaler key (ignored)",
    ]


@pytest.mark.parametrize(
    ("flags", "prefork", "preload"),
    [
        ([], True, True),
        (["--no-model-preload"], True, False),
        (["--no-model-prefork"], False, True),
    ],
)
def test_up_flags_turn_the_framework_zygote_and_its_model_preload_off(
    flags: list[str], prefork: bool, preload: bool
) -> None:
    args = cli._parser().parse_args(["up", "spec.yaml", *flags])
    settings = cli.supervisor_settings(args)
    assert (settings.model_prefork, settings.model_preload) == (prefork, preload)
