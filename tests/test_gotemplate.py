"""process_names' name templates: the Go text/template subset, each case as
Debian's prometheus-process-exporter 0.7.10 renders it (recorded from the
binary with a comm rule and cmdline '(?P<arg>600)' over one process;
tests/test_side_by_side.py checks templates against the binary live)."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.gotemplate import GoTime, TemplateError, parse
from exporter.grouping import compile_rule, go_base

CGROUPS = ("/",) * 5 + ("/process_api/1c97",) + ("/",) * 4
STARTED = datetime.datetime(2026, 12, 3, 14, 53, 11, 40000, tzinfo=datetime.timezone.utc)
FIELDS = {
    "Comm": "pxtest",
    "ExeBase": "pxtest",
    "ExeFull": "./pxtest",
    "Username": "root",
    "PID": 16421,
    "StartTime": GoTime(STARTED),
    "Cgroups": CGROUPS,
    "Matches": {"": "600", "arg": "600"},
}

# template -> what process-exporter 0.7.10 names the group
RENDERED = {
    '{{.Matches.arg | printf "%s"}}': "600",
    '{{.Matches.nope | printf "%s"}}': "%!s(<nil>)",
    "{{.Matches.nope}}": "<no value>",
    '{{printf "%d-%v-%q-%s" .PID .Comm .Comm .ExeBase}}': '16421-pxtest-"pxtest"-pxtest',
    '{{printf "%05d|%x|%5s|%-6s|" .PID .PID .Comm .Comm}}': "16421|4025|pxtest|pxtest|",
    '{{printf "%-8q|%08d|%+d" .Comm .PID .PID}}': '"pxtest"|00016421|+16421',
    '{{printf "%t %c %o %X %b" true 65 8 255 5}}': "true A 10 FF 101",
    '{{printf "%.2s" .Comm}}': "px",
    '{{printf "%x" .Comm}}': "707874657374",
    '{{printf "%q" .PID}}': "'䀥'",
    '{{printf "%d" .Comm}}': "%!d(string=pxtest)",
    '{{printf "%s"}}': "%!s(MISSING)",
    '{{printf "%s %s" .Comm}}': "pxtest %!s(MISSING)",
    '{{printf "%s %s" "a" "b" 3 .Comm}}': "a b%!(EXTRA int=3, string=pxtest)",
    '{{printf "%s" .Cgroups}}': "[/ / / / / /process_api/1c97 / / / /]",
    '{{printf "%v" .Matches}}': "map[:600 arg:600]",
    '{{printf "%v" .StartTime}}': "2026-12-03 14:53:11.04 +0000 UTC",
    '{{printf "%v %v %v" (len .Comm) (eq 1 1) nil}}': "6 true <nil>",
    '{{.Comm}}{{.Comm | printf "%s-%s" "a"}}': "pxtesta-pxtest",
    '{{.Matches.arg | printf "%s-%s" .Comm}}': "pxtest-600",
    "{{.StartTime}}": "2026-12-03 14:53:11.04 +0000 UTC",
    "{{.Cgroups}}": "[/ / / / / /process_api/1c97 / / / /]",
    "{{.Matches}}": "map[:600 arg:600]",
    "{{len .Cgroups}}": "10",
    "{{.Comm | len}}": "6",
    "{{.Matches.arg | len}}": "3",
    "{{index .Cgroups 5}}": "/process_api/1c97",
    '{{index .Matches "arg"}}': "600",
    '{{index .Matches "nope"}}': "",
    "{{index .Comm 0}}": "112",
    "{{slice .Comm 1 3}}": "xt",
    "{{slice .Cgroups 4 6}}": "[/ /process_api/1c97]",
    '{{if eq .Comm "pxtest"}}yes{{else}}no{{end}}': "yes",
    "{{if .Matches.nope}}a{{else if .Comm}}b{{end}}": "b",
    '{{and .Comm .PID}}|{{or "" .ExeBase}}|{{not .Comm}}': "16421|pxtest|false",
    "{{not .Matches.nope}}": "true",
    '{{eq .Matches.nope "x"}}': "false",
    "{{lt .PID 5}}{{ne 1 2}}{{le 1 1}}": "falsetruetrue",
    '{{print .Comm 1 2 "x" "y"}}|': "pxtest1 2xy|",
    "{{print .Matches.nope}}": "<nil>",
    '{{.PID}}{{"lit"}}{{true}}': "16421littrue",
    "{{/* c */}}a": "a",
    "{{- .Comm -}}": "pxtest",
    "{{-3}}": "-3",
    "app  {{- .Comm -}}  x": "apppxtestx",
    # run-time errors: Go stops the output there
    "{{index .Cgroups 50}}x": "",
    "{{index .Cgroups -1}}": "",
    "a{{eq .Comm 1}}b": "a",
    "{{.Matches.nope | len}}": "",
}


@pytest.mark.parametrize("template", RENDERED)
def test_renders_as_process_exporter(template: str) -> None:
    assert parse(template).render(FIELDS.__getitem__) == RENDERED[template]


# template -> part of the load error (process-exporter refuses the first
# three too; the others are outside the subset, or would render wrongly)
REFUSED = {
    "{{.Comm": "unclosed action",
    "{{foo .Comm}}": 'function "foo" not defined',
    "{{ /* x */ }}": "unexpected",
    "{{.Nope}}": "unknown template field .Nope",
    "{{.Comm.X}}": "has no field X",
    "{{.Matches.a.b}}": "has no field b",
    "{{html .Comm}}": "html is not supported",
    "{{range .Cgroups}}{{end}}": "range is not supported",
    "{{$x := .Comm}}": "variables",
    "{{printf .Comm}}": "format must be a string literal",
    '{{printf "%f" .PID}}': "verb '%f' is not supported",
    '{{printf "%99999s" .Comm}}': "width or precision over",
    "{{if .Comm}}x": "if without end",
    "{{end}}": "unexpected",
    "{{.Comm 1}}": "can't give argument to non-function",
    '{{"x" | .Comm}}': "can't give argument to non-function",
    "{{len}}": "wrong number of arguments for len",
    "{{1.5}}": "decimal integers only",
    "{{.}}": "'.' alone",
    "{{" + "(" * 40 + ".Comm" + ")" * 40 + "}}": "nested deeper",
    "x\ud800{{.Comm}}": "lone surrogate",  # a YAML "\\ud800" escape: no label holds it
}


@pytest.mark.parametrize("template", REFUSED)
def test_outside_the_subset_is_a_load_error(template: str) -> None:
    with pytest.raises(TemplateError, match=REFUSED[template].replace("(", r"\(")):
        parse(template)


def test_a_surrogate_rune_prints_as_go_does_never_as_a_lone_surrogate() -> None:
    """Go's %c and %q print U+FFFD for an integer that is no Unicode scalar
    value; a lone surrogate in a name made every exposition (and len) fail."""
    template = parse('{{printf "%c|%q|%c" 55296 57343 -1}}|{{len (printf "%c" 55296)}}')
    assert template.render(FIELDS.__getitem__) == "\ufffd|'\ufffd'|\ufffd|3"


def test_each_pipeline_stage_is_a_nesting_level() -> None:
    """A long pipeline parsed but overflowed the stack when rendered (or when
    parsed, for a longer one, with a traceback instead of a load error)."""
    stages = ' | printf "%s"'
    assert parse("{{.Comm" + stages * 31 + "}}").render(FIELDS.__getitem__) == "pxtest"
    for n in (40, 494, 700):
        with pytest.raises(TemplateError, match="nested deeper than 32 levels"):
            parse("{{.Comm" + stages * n + "}}")


@pytest.mark.parametrize("spec", ["9" * 5000, "." + "9" * 5000, ".0001000", ".00001001"])
def test_a_width_of_thousands_of_digits_is_a_load_error(spec: str) -> None:
    """Python's int() refuses over 4300 digits: that was no clean load error."""
    template = '{{printf "%' + spec + 's" .Comm}}'
    if spec == ".0001000":  # leading zeros count for nothing: precision 1000
        assert parse(template).render(FIELDS.__getitem__) == "pxtest"
        return
    with pytest.raises(TemplateError, match=r"^printf width or precision over 1000$"):
        parse(template)


def test_only_the_fields_a_template_uses_are_read() -> None:
    assert parse('{{printf "%s-%d" .Comm .PID}}{{if .Matches.x}}{{end}}').fields == {
        "Comm",
        "PID",
        "Matches",
    }


@pytest.mark.parametrize(
    ("path", "base"),
    [("", "."), ("foo/", "foo"), ("/", "/"), ("//", "/"), ("/usr/bin/x", "x"), ("x", "x")],
)
def test_go_base(path: str, base: str) -> None:
    assert go_base(path) == base


def test_start_time_keeps_go_fractions() -> None:
    at = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert str(GoTime(at)) == "2026-01-02 03:04:05 +0000 UTC"
    assert str(GoTime(at.replace(microsecond=100000))) == "2026-01-02 03:04:05.1 +0000 UTC"


class _Proc:
    pid, starttime, username, cwd = 7, 1, "u", "/"
    cgroups: tuple[str, ...] = ()
    start_time = STARTED

    def __init__(self, comm: str, cmdline: tuple[str, ...]) -> None:
        self.comm, self.cmdline = comm, cmdline


@pytest.mark.parametrize(("argv0", "name"), [("", "."), ("foo/", "foo"), ("/", "/")])
def test_exe_base_of_odd_argv0_is_go_filepath_base(argv0: str, name: str) -> None:
    # process-exporter 0.7.10: `exec -a '' pxtest` is in group ".", never "".
    assert compile_rule({"comm": ["pxtest"]}).match(_Proc("pxtest", (argv0, "600"))) == name


def test_an_empty_name_is_the_rules_key_so_no_two_rules_merge() -> None:
    first = compile_rule({"name": "{{.Matches.x}}", "cmdline": ["(?P<x>a*)"]}, "process_names[0]")
    second = compile_rule({"name": '{{index .Matches "y"}}', "comm": ["b"]}, "process_names[1]")
    assert first.match(_Proc("a", ("b",))) == "process_names[0]"
    assert second.match(_Proc("b", ("b",))) == "process_names[1]"


# Pieces templates are made of, valid and not: any mix parses into a
# template or is refused with a TemplateError, and a template renders.
PIECES = [
    "{{",
    "}}",
    "{{- ",
    " -}}",
    ".Comm",
    ".Matches.arg",
    ".Matches",
    ".Cgroups",
    ".PID",
    ".StartTime",
    " | ",
    "printf ",
    '"%s" ',
    '"%5.2q %d %v %x" ',
    "len ",
    "index ",
    "slice ",
    "eq ",
    "lt ",
    "and ",
    "or ",
    "not ",
    "print ",
    "if ",
    "else ",
    "end",
    "(",
    ")",
    "0 ",
    "-1 ",
    "99 ",
    "nil ",
    "true ",
    "/* x */",
    "text",
    '"\\u00e9"',
    "$x",
]


@given(st.lists(st.sampled_from(PIECES), max_size=12))
@settings(max_examples=400, deadline=None)
def test_any_template_parses_or_is_refused_and_renders(pieces: list[str]) -> None:
    try:
        template = parse("".join(pieces))
    except TemplateError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(template.render(FIELDS.__getitem__), str)
