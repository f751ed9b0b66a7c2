"""Bad input gets one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from natlens.cli import cli

ROOT = Path(__file__).resolve().parent.parent.parent
FIX = ROOT / "tests" / "fixtures"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """natlens in this process (click's CliRunner), as the console script runs it."""
    r = CliRunner().invoke(cli, list(args), input=stdin)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(["natlens", *args], r.exit_code, r.stdout, r.stderr)


def test_the_console_script_fails_in_one_line_too() -> None:
    r = subprocess.run([sys.executable, "-m", "natlens", "report", "--db", "/nonexistent/x"],
                       capture_output=True, text=True, timeout=60)
    one_line_error(r, 1, "no such database")


def one_line_error(r: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("natlens: ") and needle in lines[0]
    assert "Traceback" not in r.stderr


def test_rules_parse_file_and_stdin() -> None:
    text = (FIX / "seed-node2.iptables-save").read_text()
    a = run("rules", "parse", str(FIX / "seed-node2.iptables-save"))
    b = run("rules", "parse", "-", stdin=text)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and '"KUBE-SVC-PK4BNTKC2JYVE7B2"' in a.stdout


def test_rules_parse_detects_each_mode_from_the_text() -> None:
    for name, mode in (("seed-node2.iptables-save", "iptables"), ("seed-node2.nft", "nftables"),
                       ("ipvs-node.ipvsadm", "ipvs"), ("ipvs-node.ipvsadm-save", "ipvs")):
        r = run("rules", "parse", str(FIX / name))
        assert r.returncode == 0 and f'"mode": "{mode}"' in r.stdout, (name, r.stderr)


@pytest.mark.parametrize("args,stdin,code,needle", [
    (["report", "--bogus"], None, 2, "No such option"),
    (["report"], None, 2, "--db"),
    (["report", "--db", "/nonexistent/x.db"], None, 1, "no such database"),
    (["report", "--db", "x.db", "--since", "yesterday"], None, 2, "not a duration"),
    (["rules", "parse", "-"], "*nat\n:KUBE-SERVICES - [0:0]\n", 1, "truncated"),
    (["rules", "parse", "-"], "hello\n", 1, "line 1"),
    (["rules", "parse", "/nonexistent"], None, 2, "does not exist"),
    (["rules", "parse", "-"], "TCP  svc.example:http rr\n", 1, "a name, not an address"),
    (["rules", "parse", "--mode", "ipvs", "-"], "hello\n", 1, "line 1"),
    (["agent", "--collector", "nocolon"], None, 2, "HOST:PORT"),
    (["agent", "--collector", "127.0.0.1:1", "--source", "pcap", "--decisions"], None, 2,
     "always ships every decision"),
    (["agent", "--collector", "127.0.0.1:1", "--source", "netlink", "--sample", "2"], None, 2,
     "hook and ebpf sources"),
    (["agent", "--collector", "127.0.0.1:1", "--source", "netlink", "--aggregate-only"],
     None, 2, "always ships every decision"),
    (["agent", "--collector", "127.0.0.1:1", "--decisions", "--aggregate-only"], None, 2,
     "contradict"),
    (["agent"], None, 2, "--collector"),
    (["agent", "--collector", "127.0.0.1:1", "--sample", "0"], None, 2, "--sample"),
    (["lab", "up", "/nonexistent.yaml"], None, 2, "does not exist"),
    (["agent", "--collector", "127.0.0.1:1", "--source", "all"], None, 2,
     "refusing plaintext"),
    (["pcap", "import", "x.pcap", "--node", "n"], None, 2, "one of the two"),
    (["pcap", "import", "x.pcap", "--node", "n", "--collector", "127.0.0.1:1"], None, 2,
     "refusing plaintext"),
    (["pcap", "import", "x.pcap", "--node", "n", "--collector", "127.0.0.1:1", "--insecure",
      "--ack-timeout", "1"], None, 1, "did not answer within 1s; nothing was imported"),
])
def test_bad_input(args: list[str], stdin: str | None, code: int, needle: str) -> None:
    one_line_error(run(*args, stdin=stdin), code, needle)


def test_unknown_scenario_key(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text((ROOT / "examples" / "seed-bill-service.yaml").read_text() + "colour: red\n")
    one_line_error(run("lab", "up", str(p)), 1, "unknown key 'colour'")


def test_report_on_an_empty_database(tmp_path: Path) -> None:
    from natlens.collector.store.sqlite import SqliteStore

    SqliteStore(str(tmp_path / "db")).close()
    r = run("report", "--db", str(tmp_path / "db"), "-o", "json")
    assert r.returncode == 0
    assert '"services": []' in r.stdout


def test_every_command_is_documented() -> None:
    docs = (ROOT / "README.md").read_text() + (ROOT / "docs" / "operations.md").read_text()
    for cmd in ("natlens agent", "natlens collector", "natlens report", "natlens rules parse",
                "natlens lab up", "natlens lab down", "natlens lab traffic", "natlens lab exec",
                "natlens lab run", "natlens demo"):
        assert cmd in docs, f"{cmd} is not documented"
        assert run(*cmd.split()[1:], "--help").returncode == 0


def test_print_bpf_shows_the_program_with_the_node_pin_dir() -> None:
    r = run("agent", "--source", "ebpf", "--print-bpf", "--node", "n1", "--netns", "lab-x",
            "--pin-root", "/sys/fs/bpf/t")
    assert r.returncode == 0, r.stderr
    assert "int ct_filter(struct __sk_buff *skb)" in r.stdout
    assert '"/sys/fs/bpf/t/n1@lab-x/counters"' in r.stdout
    assert "static __always_inline int walk_event(" in r.stdout  # its include, inlined


def test_print_bpf_shows_the_hook_by_default() -> None:
    """``auto`` tries the hook first: that is the program it shows."""
    r = run("agent", "--print-bpf")
    assert r.returncode == 0, r.stderr
    assert 'SEC("netfilter")' in r.stdout and "int natlens_closes(" in r.stdout
    assert "#include \"ctnetlink_walk.h\"" not in r.stdout


def test_the_agent_does_not_load_the_collectors_statistics() -> None:
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "natlens", "agent", "--help"],
                       capture_output=True, text=True, check=True)
    loaded = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()}
    assert not loaded & {"scipy", "natlens.collector.report.build", "natlens.lab.run"}
