"""An authenticated chief (issue 15): the shared token, TLS, and the open-chief warning.

The default-suite tests run at the gRPC level in this process: the chief's own
server (`distribute.open_server`, a real keras-tuner oracle behind it) on a free
loopback port, and a real keras-tuner `OracleClient` or `wait_for_chief` as the
worker; a few seconds in all. One `slow` test runs real chief and worker
processes. Certificates are self-signed, made with `openssl req` (the
`cryptography` package is not a dependency here).
"""

import shutil
import subprocess
import time
import warnings

import grpc
import keras_tuner as kt
import pytest
from test_cli import TINY_SPACE, make_folder
from test_distributed import finish, free_port, start, trials

from resnet_tuner.run import auth, distribute


def make_cert(folder, name="chief"):
    """A self-signed certificate and key for localhost / 127.0.0.1: `(cert, key)` paths."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True)
    return str(cert), str(key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    return {"chief": make_cert(folder, "chief"), "other": make_cert(folder, "other")}


def token_file(folder, text, name="token"):
    path = folder / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def chief(tmp_path, monkeypatch):
    """`start(credentials, host)`: the chief's server in this process; `.log` holds its lines.

    After it starts, this process's environment is a worker's (`w1`), so
    `wait_for_chief` and `OracleClient` reach the chief as a worker would.
    """
    servers, log = [], []

    def start_chief(credentials=None, host="127.0.0.1"):
        port = free_port()
        monkeypatch.setenv(distribute.ENV_ID, "chief")
        monkeypatch.setenv(distribute.ENV_IP, host)
        monkeypatch.setenv(distribute.ENV_PORT, str(port))
        oracle = tiny_oracle(tmp_path)
        server, _ = distribute.open_server(oracle, credentials, log=log.append)
        servers.append(server)
        monkeypatch.setenv(distribute.ENV_ID, "w1")
        monkeypatch.setenv(distribute.ENV_IP, "127.0.0.1")
        return oracle

    start_chief.log = log
    yield start_chief
    for server in servers:
        server.stop(grace=0)


def tiny_oracle(folder):
    hp = kt.HyperParameters()
    hp.Int("units", 1, 4)
    oracle = kt.oracles.RandomSearchOracle(objective="val_loss", hyperparameters=hp,
                                           max_trials=3, seed=1)
    oracle._set_project_dir(str(folder), "chief")  # what a Tuner does with its oracle
    return oracle


def worker_client(oracle, credentials):
    """keras-tuner's own worker client, its calls sent through `credentials`."""
    from keras_tuner.src.distribute.oracle_client import OracleClient

    client = OracleClient(oracle)
    distribute.use_credentials(client, credentials)
    return client


def test_a_worker_holding_the_token_is_served(chief, tmp_path):
    oracle = chief(auth.Credentials(token_file=token_file(tmp_path, "s3cret\n", "chief-token")))
    mine = auth.Credentials(token_file=token_file(tmp_path, "  s3cret"))  # stripped: the same
    distribute.wait_for_chief(5, mine)
    trial = worker_client(oracle, mine).create_trial("w1")
    assert trial.status == "RUNNING" and list(oracle.ongoing_trials) == ["w1"]
    assert not any("refused" in line for line in chief.log)


@pytest.mark.parametrize("sent, reason", [(None, "sent no token"),
                                          ("guess", "sent a wrong token")])
def test_a_worker_without_the_token_is_refused_on_both_sides(sent, reason, chief, tmp_path,
                                                            monkeypatch):
    oracle = chief(auth.Credentials(token_file=token_file(tmp_path, "s3cret", "chief-token")))
    mine = auth.Credentials(token_file=sent and token_file(tmp_path, sent))
    started = time.monotonic()
    with pytest.raises(distribute.ChiefRefusedError) as refused:
        distribute.wait_for_chief(30, mine)
    assert time.monotonic() - started < 10  # at once, not after the connect timeout
    message = str(refused.value)
    assert message.startswith(f"the chief at {distribute.address()} refused this worker's "
                              "token: ") and "Check --token-file" in message, message
    assert "\n" not in message
    client = worker_client(oracle, mine)
    for _ in range(3):  # keras-tuner's own calls are refused too
        with pytest.raises(grpc.RpcError) as err:
            client.create_trial("w1")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    monkeypatch.setenv(distribute.ENV_ID, "w2")  # new names from the same host: no new line
    with pytest.raises(distribute.ChiefRefusedError):
        distribute.wait_for_chief(30, mine)
    assert not oracle.ongoing_trials and not oracle.trials
    refusals = [line for line in chief.log if "refused" in line]
    assert refusals == [f"chief: refused worker w1 at 127.0.0.1: it {reason}; its calls are "
                        "refused until it uses the chief's --token-file"]  # once, not a flood


def test_a_chief_without_a_token_serves_a_worker_that_sends_one(chief, tmp_path):
    oracle = chief()
    mine = auth.Credentials(token_file=token_file(tmp_path, "s3cret"))
    distribute.wait_for_chief(5, mine)
    assert worker_client(oracle, mine).create_trial("w1").status == "RUNNING"


def test_tls_with_the_chiefs_certificate_as_ca(chief, certs, tmp_path):
    cert, key = certs["chief"]
    secret = token_file(tmp_path, "s3cret")
    oracle = chief(auth.Credentials(token_file=secret, tls_cert=cert, tls_key=key))
    mine = auth.Credentials(token_file=secret, tls_ca=cert)
    distribute.wait_for_chief(5, mine)
    assert worker_client(oracle, mine).create_trial("w1").status == "RUNNING"
    with pytest.raises(distribute.ChiefRefusedError):  # TLS does not replace the token
        distribute.wait_for_chief(5, auth.Credentials(tls_ca=cert))


@pytest.mark.parametrize("chief_tls, worker_ca, hint", [
    (True, None, "if it was started with --tls-cert, give this worker --tls-ca"),
    (False, "chief", "The chief does not speak TLS"),
    (True, "other", "The chief's certificate is not signed by --tls-ca"),
])
def test_a_tls_mismatch_fails_within_the_connect_timeout_with_a_hint(
        chief_tls, worker_ca, hint, chief, certs):
    cert, key = certs["chief"]
    chief(auth.Credentials(tls_cert=cert, tls_key=key) if chief_tls else None)
    mine = auth.Credentials(tls_ca=certs[worker_ca][0] if worker_ca else None)
    started = time.monotonic()
    with pytest.raises(distribute.ChiefUnreachableError) as err:
        distribute.wait_for_chief(1.5, mine)
    assert time.monotonic() - started < 5
    assert not isinstance(err.value, distribute.ChiefRefusedError)
    assert str(err.value).startswith("Could not reach the chief at 127.0.0.1:")
    assert hint in str(err.value), str(err.value)


def test_a_chief_on_a_non_loopback_address_without_a_token_warns_once(chief, tmp_path):
    with pytest.warns(auth.OpenChiefWarning) as caught:
        chief(host="0.0.0.0")
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "anyone who can reach the port can steer the search (request trials, report " \
           "scores, end it)" in text and "--token-file" in text and "TLS" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error", auth.OpenChiefWarning)
        chief(host="127.0.0.1")  # loopback: only this machine can reach it
        chief(auth.Credentials(token_file=token_file(tmp_path, "s3cret")), host="0.0.0.0")


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.0.3", True), ("::1", True), ("localhost", True),
    ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False),
    ("chief.example.org", False),
])
def test_loopback_addresses(host, loopback):
    assert auth.is_loopback(host) is loopback


@pytest.mark.parametrize("args, message", [
    (["--token-file", "{token}"], "are for a distributed search: give --chief"),
    (["--chief", "127.0.0.1:1", "--tls-cert", "{cert}"], "--tls-cert and --tls-key go together"),
    (["--chief", "127.0.0.1:1", "--tls-key", "{key}"], "--tls-cert and --tls-key go together"),
    (["--chief", "127.0.0.1:1", "--tls-ca", "{cert}"], "--tls-ca is for workers"),
    (["--worker", "127.0.0.1:1", "--tls-cert", "{cert}", "--tls-key", "{key}"],
     "--tls-cert and --tls-key are for the chief"),
    (["--chief", "127.0.0.1:1", "--token-file", "{missing}"], "--token-file {missing} does not "
                                                              "exist"),
    (["--chief", "127.0.0.1:1", "--token-file", "{empty}"], "--token-file {empty} is empty"),
    (["--chief", "127.0.0.1:1", "--tls-cert", "{cert}", "--tls-key", "{other_key}"],
     "do not load as a PEM certificate and its unencrypted private key"),
    (["--worker", "127.0.0.1:1", "--tls-ca", "{token}"], "holds no PEM certificate"),
    (["--worker", "127.0.0.1:1", "--tls-ca", "{missing}"], "--tls-ca {missing} does not exist"),
])
def test_bad_credential_flags_fail_early_with_a_message(args, message, certs, tmp_path, capsys,
                                                         monkeypatch):
    from resnet_tuner import cli

    for name in (distribute.ENV_ID, distribute.ENV_IP, distribute.ENV_PORT):
        monkeypatch.delenv(name, raising=False)
    paths = {"token": token_file(tmp_path, "s3cret"), "empty": token_file(tmp_path, " \n", "e"),
             "missing": str(tmp_path / "nowhere"), "cert": certs["chief"][0],
             "key": certs["chief"][1], "other_key": certs["other"][1]}
    argv = [a.format(**paths) for a in args]
    out = tmp_path / "r"
    assert cli.main(["search", "digits", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message.format(**paths) in err, err
    assert not out.exists()  # refused before the run directory or the data


def test_a_binary_token_file_is_refused(tmp_path):
    path = tmp_path / "token"
    path.write_bytes(b"\xff\xfe\x00secret")
    with pytest.raises(ValueError, match="must hold printable ASCII"):
        auth.read_token(path)


@pytest.mark.slow
def test_chief_and_worker_with_token_and_tls_and_an_intruder(tmp_path, certs):
    """A chief with a token and TLS, a worker holding both, and one with a wrong token."""
    folder = make_folder(tmp_path / "shapes", per_class=10)
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    out = tmp_path / "run"
    common = [str(folder), "--out", str(out), "--space", str(space), "--tuner", "random",
              "--max-trials", "2", "--image-size", "16", "--split", "0.4,0.3,0.3"]
    cert, key = certs["chief"]
    secret = token_file(tmp_path, "s3cret")
    address = f"127.0.0.1:{free_port()}"
    chief = start([*common, "--chief", address, "--token-file", secret, "--tls-cert", cert,
                   "--tls-key", key], tmp_path / "chief.log")
    intruder = start([*common, "--worker", address, "--worker-id", "intruder", "--tls-ca", cert,
                      "--token-file", token_file(tmp_path, "guess", "wrong"),
                      "--connect-timeout", "120"], tmp_path / "intruder.log")
    worker = start([*common, "--worker", address, "--worker-id", "w1", "--tls-ca", cert,
                    "--token-file", secret, "--connect-timeout", "120"], tmp_path / "w1.log")
    intruder_log = finish(intruder, timeout=150)
    worker_log = finish(worker, timeout=150)
    chief_log = finish(chief, timeout=60)
    assert intruder.returncode == 2, intruder_log[-3000:]
    assert (f"resnet-tuner: error: the chief at {address} refused this worker's token: "
            "this worker's token does not match the chief's") in intruder_log, intruder_log
    assert "Traceback" not in intruder_log
    assert worker.returncode == 0, worker_log[-3000:]
    assert chief.returncode == 0, chief_log[-3000:]
    assert "chief: refused worker intruder at 127.0.0.1: it sent a wrong token" in chief_log
    assert chief_log.count("refused worker intruder") == 1
    assert f"--worker {address} --worker-id NAME --token-file PATH --tls-ca CA.pem" in chief_log
    assert "warning" not in chief_log  # loopback and a token: nothing to warn about
    assert len(trials(out)) == 2
    assert all(t["status"] == "COMPLETED" for t in trials(out).values())
    assert "best model exported" in chief_log
