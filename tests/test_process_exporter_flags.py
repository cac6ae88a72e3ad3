"""process-exporter's flag spellings (Go flags) where they mean what ours do:
its unit file works with only the binary renamed."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.cli import build_parser, go_bool_flags

from conftest import FIXTURES, group_value, parse_samples, run_cli


@pytest.mark.parametrize(
    ("argv", "config", "procfs", "children"),
    [
        (["-config.path", "a.yaml", "-procfs", "/host/proc"], "a.yaml", "/host/proc", None),
        (["--config.path=a.yaml", "--procfs=/p"], "a.yaml", "/p", None),
        (["-config.path=a.yaml", "-children"], "a.yaml", "/proc", True),
        (["-children=false"], None, "/proc", False),
        (["--children=0"], None, "/proc", False),
        (["-children=T", "once"], None, "/proc", True),
        (["--config", "b.yaml", "--path.procfs", "/q"], "b.yaml", "/q", None),
    ],
)
def test_go_spellings_map_onto_ours(
    argv: list[str], config: str | None, procfs: str, children: bool | None
) -> None:
    args = build_parser().parse_args(go_bool_flags(argv))
    assert (args.config, args.procfs, args.children) == (config, procfs, children)


def test_children_takes_no_separate_value() -> None:
    # As in Go: `-children once` is -children=true, then the command.
    args = build_parser().parse_args(go_bool_flags(["-children", "once"]))
    assert (args.children, args.command) == (True, "once")


def test_a_bad_boolean_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_cli("check-config", "-children=maybe")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "invalid boolean 'maybe'" in result.stderr


@pytest.mark.parametrize(("flag", "kthreadd"), [((), 2), (("-children=false",), 1)])
def test_the_flag_overrides_the_config(
    tmp_path: Path, flag: tuple[str, ...], kthreadd: int
) -> None:
    # The kernel thread kworker is kthreadd's child: it joins with children on.
    config = tmp_path / "c.yaml"
    config.write_text("children: true\nprocess_names:\n  - comm: [kthreadd]\n")
    tree = FIXTURES / "procfs" / "kernel-threads"
    result = run_cli("once", "-config.path", str(config), "-procfs", str(tree), *flag)
    assert result.returncode == 0, result.stderr
    samples = parse_samples(result.stdout)
    assert group_value(samples, "pss_group_processes", "kthreadd") == kthreadd
