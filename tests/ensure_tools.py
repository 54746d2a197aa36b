"""Make sure the tests have the Debian tools they drive besides the browser: `pgbouncer`.

    python tests/ensure_tools.py

The PgBouncer tests (tests/pgbouncer.py) start Debian's pgbouncer (1.18). When it is missing and
this runs as root, it is installed with apt-get; otherwise it says what is missing and exits 0,
and those tests skip, or fail when CI=true. (The browser has tests/ensure_browser.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

PACKAGES = {"pgbouncer": "/usr/sbin/pgbouncer"}  # package -> the program the tests run


def installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and "install ok installed" in result.stdout


def main() -> int:
    if shutil.which("dpkg-query") is None:
        print("ensure_tools: not a Debian system; install pgbouncer yourself", file=sys.stderr)
        return 0
    missing = [
        p for p, program in PACKAGES.items() if not installed(p) or not os.path.exists(program)
    ]
    if not missing:
        return 0
    if os.geteuid() != 0:
        print(
            f"ensure_tools: missing {', '.join(missing)} (run as root to install)", file=sys.stderr
        )
        return 0
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"ensure_tools: apt-get install {' '.join(missing)}", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
    )
    # Debian starts the package's own service on port 6432; the tests start their own.
    subprocess.run(["systemctl", "disable", "--now", "pgbouncer"], capture_output=True, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
