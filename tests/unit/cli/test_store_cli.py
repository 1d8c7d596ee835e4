"""The CLI against the local store: `--store local` verbs, passwords from files, values on
stdin, clear refusals (and the cluster backend of the new verbs refused, not faked)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from secure_keys.cli import main as cli
from secure_keys.core.hierarchy import DEFAULT_ITERATIONS, MIN_ITERATIONS
from secure_keys.core.sealing import RecipientPrivateKey, open_sealed
from tests.conftest import CANARY

ROOT = Path(__file__).parents[3]


class Run:
    """Runs ``secure-keys`` in this process with the given stdin; keeps what it wrote."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.store = tmp_path / "store"
        self.password = tmp_path / "pw"
        self.password.write_text("a fine password\n")
        self._capsys = capsys

    def __call__(
        self, *argv: str, stdin: bytes = b"", monkeypatch: pytest.MonkeyPatch
    ) -> tuple[int, bytes, str]:
        out = io.BytesIO()
        fake_stdout = io.TextIOWrapper(out, write_through=True)
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        monkeypatch.setattr(sys, "stdout", fake_stdout)
        code = cli.main(["--store-dir", str(self.store), *argv])
        fake_stdout.flush()
        monkeypatch.undo()
        return code, out.getvalue(), self._capsys.readouterr().err

    def init(self, monkeypatch: pytest.MonkeyPatch) -> None:
        code, _, err = self(
            "--store",
            "local",
            "init",
            "--password-file",
            str(self.password),
            "--iterations",
            str(MIN_ITERATIONS),
            monkeypatch=monkeypatch,
        )
        assert code == 0, err


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(tmp_path, capsys)


def test_the_verbs_work_against_the_local_store(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    run.init(monkeypatch)
    pw = ("--password-file", str(run.password))
    local = ("--store", "local")
    code, _, err = run(*local, "add", "api-key", *pw, stdin=b"first\n", monkeypatch=monkeypatch)
    assert (code, err) == (0, "added api-key (version 1)\n")
    code, out, _ = run(*local, "get", "api-key", *pw, monkeypatch=monkeypatch)
    assert (code, out) == (0, b"first")
    code, _, err = run(*local, "rotate", "api-key", *pw, stdin=b"second", monkeypatch=monkeypatch)
    assert code == 0, err
    assert run(*local, "get", "api-key", *pw, monkeypatch=monkeypatch)[1] == b"second"
    previous = run(*local, "get", "--previous", "api-key", *pw, monkeypatch=monkeypatch)
    assert previous[1] == b"first"
    code, out, _ = run(*local, "list", *pw, monkeypatch=monkeypatch)
    assert out.decode().startswith("api-key\tv1 Archived, v2 Active\t")
    code, out, err = run(*local, "audit", *pw, monkeypatch=monkeypatch)
    assert code == 0
    assert "chain intact" in err
    assert b"first" not in out
    assert b'"event":"key.rotate"' in out.replace(b" ", b"")
    code, _, _ = run(*local, "rm", "api-key", *pw, monkeypatch=monkeypatch)
    assert code == 0
    code, _, err = run(*local, "get", "api-key", *pw, monkeypatch=monkeypatch)
    assert (code, err) == (2, "secure-keys: error: key 'api-key' has no live version\n")


def test_the_store_is_chosen_by_the_environment_too(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    run.init(monkeypatch)
    monkeypatch.setenv("SECUREKEYS_STORE", "local")
    code, out, _ = run("list", "--password-file", str(run.password), monkeypatch=monkeypatch)
    assert (code, out) == (0, b"")
    monkeypatch.setenv("SECUREKEYS_STORE", "laptop")
    code, _, err = run("list", monkeypatch=monkeypatch)
    assert code == 2
    assert "expected local or cluster" in err


def test_audit_verify_needs_a_file_and_the_audit_key(
    run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, out, err = run("--store", "cluster", "audit", "verify", monkeypatch=monkeypatch)
    assert (code, out) == (2, b"")
    assert "audit verify needs the exported log" in err
    log = tmp_path / "gateway.log"
    log.write_text('{"event": "audit", "chain": "a:1", "mac": "00"}\n')
    code, out, err = run("--store", "cluster", "audit", "verify", str(log), monkeypatch=monkeypatch)
    assert (code, out) == (2, b"")
    assert "--kms-config or --audit-key-file" in err


@pytest.mark.parametrize("verb", ["get", "list", "run", "audit"])
def test_the_read_verbs_go_to_the_cluster_and_need_a_kubeconfig(
    run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, verb: str
) -> None:
    argv = {
        "get": ["get", "k"],
        "list": ["list"],
        "run": ["run", "--key", "k", "--", "true"],
        "audit": ["audit"],
    }
    missing = tmp_path / "absent.kubeconfig"
    code, out, err = run(
        f"--kubeconfig={missing}", "--store", "cluster", *argv[verb], monkeypatch=monkeypatch
    )
    assert (code, out) == (2, b"")
    assert f"kubeconfig {missing} does not exist" in err


@pytest.mark.parametrize("verb", ["init", "add", "rm", "passwd"])
def test_store_verbs_need_the_local_store(
    run: Run, monkeypatch: pytest.MonkeyPatch, verb: str
) -> None:
    argv = [verb] + ([] if verb in ("init", "passwd") else ["k"])
    code, _, err = run(*argv, monkeypatch=monkeypatch)
    assert code == 2
    assert "use --store local" in err


def test_a_value_in_argv_is_not_accepted(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    run.init(monkeypatch)
    with pytest.raises(SystemExit) as exited:
        run("--store", "local", "add", "k", CANARY, monkeypatch=monkeypatch)
    assert exited.value.code == 2


def test_wrong_password_and_loose_modes_are_one_line_errors(
    run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run.init(monkeypatch)
    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    code, _, err = run(
        "--store", "local", "list", "--password-file", str(wrong), monkeypatch=monkeypatch
    )
    assert (code, err) == (1, "secure-keys: error: wrong password\n")
    os.chmod(run.store, 0o755)  # noqa: S103 - the loose mode under test
    code, _, err = run(
        "--store", "local", "list", "--password-file", str(run.password), monkeypatch=monkeypatch
    )
    assert code == 2
    assert f"chmod 700 {run.store}" in err
    assert "Traceback" not in err


def test_passwd_changes_the_password(
    run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run.init(monkeypatch)
    pw = ("--password-file", str(run.password))
    run("--store", "local", "add", "k", *pw, stdin=b"v", monkeypatch=monkeypatch)
    new = tmp_path / "new"
    new.write_text("a newer password\n")
    code, _, err = run(
        "--store", "local", "passwd", *pw, "--new-password-file", str(new), monkeypatch=monkeypatch
    )
    assert code == 0, err
    assert run("--store", "local", "get", "k", *pw, monkeypatch=monkeypatch)[0] == 1
    code, out, _ = run(
        "--store", "local", "get", "k", "--password-file", str(new), monkeypatch=monkeypatch
    )
    assert (code, out) == (0, b"v")


def test_seal_from_the_store_makes_a_manifest_for_the_cluster(
    run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run.init(monkeypatch)
    pw = ("--password-file", str(run.password))
    run("--store", "local", "add", "stripe", *pw, stdin=CANARY.encode(), monkeypatch=monkeypatch)
    private = RecipientPrivateKey.generate()
    recipient = tmp_path / "recipient.json"
    recipient.write_text(private.public().to_json())
    code, out, err = run(
        "--store", "local", "seal", "stripe", "-n", "payments", *pw,
        "--recipient-file", str(recipient),
        monkeypatch=monkeypatch,
    )  # fmt: skip
    assert code == 0, err
    assert CANARY.encode() not in out
    sealed = yaml.safe_load(out)["spec"]["source"]["sealed"]
    opened = open_sealed(private, sealed["ciphertext"], namespace="payments", name="stripe")
    assert opened == CANARY.encode()


def test_run_puts_keys_in_the_child_environment_only(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    run.init(monkeypatch)
    pw = ("--password-file", str(run.password))
    run("--store", "local", "add", "api.key", *pw, stdin=CANARY.encode(), monkeypatch=monkeypatch)
    child = (
        "import os, sys; v = os.environ['API_KEY']; w = os.environ['OTHER'];"
        "sys.stdout.write(str(v == w) + ' ' + str(len(v)))"
    )
    result = subprocess.run(  # noqa: S603 - our interpreter, our CLI
        [
            sys.executable, "-m", "secure_keys.cli", "--store", "local",
            "--store-dir", str(run.store), "run", *pw, "-k", "api.key", "-k", "api.key=OTHER",
            "--", sys.executable, "-c", child,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "operator")},
        check=False,
        timeout=120,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, f"True {len(CANARY)}"), result.stderr
    assert CANARY not in result.stderr
    # The real command's `get`: the value alone on stdout (no log line), nothing on stderr.
    got = subprocess.run(  # noqa: S603 - our interpreter, our CLI
        [
            sys.executable, "-m", "secure_keys.cli", "--store", "local",
            "--store-dir", str(run.store), "get", "api.key", *pw,
        ],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "operator")},
        check=False,
        timeout=120,
    )  # fmt: skip
    assert (got.returncode, got.stdout, got.stderr) == (0, CANARY.encode(), b"")


def _has_terminal() -> bool:
    try:
        with open("/dev/tty", "rb"):
            return True
    except OSError:
        return False


@pytest.mark.skipif(_has_terminal(), reason="a terminal is attached: the CLI would prompt on it")
def test_without_a_password_file_or_terminal_stdin_is_never_read_as_the_password(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    run.init(monkeypatch)
    code, _, err = run(
        "--store", "local", "add", "k", stdin=b"the value, not a password", monkeypatch=monkeypatch
    )
    assert code == 2
    assert "no password given and no terminal to ask on: use --password-file" in err


def test_run_refuses_a_malformed_variable_name(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    run.init(monkeypatch)
    pw = ("--password-file", str(run.password))
    run("--store", "local", "add", "k", *pw, stdin=b"v", monkeypatch=monkeypatch)
    for spec in ("k=1BAD", "k=A-B", "k=ÄB"):
        code, _, err = run(
            "--store", "local", "run", *pw, "-k", spec, "--", "true", monkeypatch=monkeypatch
        )
        assert code == 2
        assert "not an environment variable name" in err


def test_totp_from_init_to_a_code_file(
    run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import pyotp

    uri_file = tmp_path / "totp-uri"
    pw = ("--password-file", str(run.password))
    code, _, err = run(
        "--store", "local", "init", *pw, "--iterations", str(MIN_ITERATIONS),
        "--totp-secret-out", str(uri_file),
        monkeypatch=monkeypatch,
    )  # fmt: skip
    assert code == 0, err
    assert os.stat(uri_file).st_mode & 0o777 == 0o600
    totp = pyotp.parse_uri(uri_file.read_text().strip())
    assert isinstance(totp, pyotp.TOTP)
    assert totp.secret not in err
    code_file = tmp_path / "code"
    code_file.write_text(totp.now() + "\n")
    code, out, err = run(
        "--store", "local", "list", *pw, "--totp-file", str(code_file), monkeypatch=monkeypatch
    )
    assert (code, out) == (0, b""), err
    code, _, err = run(
        "--store", "local", "list", *pw, "--totp-file", str(code_file), monkeypatch=monkeypatch
    )
    assert (code, err) == (1, "secure-keys: error: wrong or already used TOTP code\n")


def test_init_help_gives_the_store_s_own_iteration_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The parser does not import the key hierarchy (cli/args.py): its help spells the
    figures, and they must stay the hierarchy's."""
    with pytest.raises(SystemExit):
        cli.main(["init", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"default {DEFAULT_ITERATIONS:,}" in help_text
    assert f"at least {MIN_ITERATIONS:,}" in help_text
