"""An exec credential plugin for the tests: a real program run by ``ExecAuthenticator``.

It counts its runs in $PLUGIN_STATE/runs, records what it was given (argv, the exec info
and the env the kubeconfig set) in $PLUGIN_STATE/calls.jsonl, and prints an
ExecCredential: a token ``token-<run>`` or, with $PLUGIN_CERT, a client certificate.
$PLUGIN_EXPIRES_IN sets the expiry (seconds from now); $PLUGIN_FAIL makes it fail after
printing a credential, to check that its stdout never reaches an error message.
"""

import datetime
import json
import os
import sys
from pathlib import Path

state = Path(os.environ["PLUGIN_STATE"])
runs = state / "runs"
run = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(run))
with (state / "calls.jsonl").open("a") as calls:
    record = {
        "argv": sys.argv[1:],
        "info": json.loads(os.environ.get("KUBERNETES_EXEC_INFO", "null")),
        "stdin_is_tty": sys.stdin.isatty(),
        "stdin": sys.stdin.read() if not sys.stdin.isatty() else None,
        "mode": os.environ.get("PLUGIN_MODE"),
    }
    calls.write(json.dumps(record) + "\n")

status: dict[str, str] = {}
if os.environ.get("PLUGIN_CERT"):
    status["clientCertificateData"] = Path(os.environ["PLUGIN_CERT"]).read_text()
    status["clientKeyData"] = Path(os.environ["PLUGIN_KEY"]).read_text()
else:
    status["token"] = f"{os.environ.get('PLUGIN_TOKEN_PREFIX', 'token')}-{run}"
if os.environ.get("PLUGIN_EXPIRES_IN"):
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
        seconds=float(os.environ["PLUGIN_EXPIRES_IN"])
    )
    status["expirationTimestamp"] = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
api_version = os.environ.get("PLUGIN_API_VERSION", "client.authentication.k8s.io/v1")
print(json.dumps({"apiVersion": api_version, "kind": "ExecCredential", "status": status}))
if os.environ.get("PLUGIN_FAIL"):
    print("profile 'dev' has no credentials configured", file=sys.stderr)
    sys.exit(3)
