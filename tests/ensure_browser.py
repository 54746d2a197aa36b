"""Make sure the browser tests have a browser: Debian's chromium and CJK fonts.

    python tests/ensure_browser.py

Playwright's own browser download cannot be reached from these machines, so the tests drive the
distribution's chromium (/usr/bin/chromium). When it or the fonts are missing and this runs as
root, they are installed with apt-get; otherwise it says what is missing and exits 0, and the
browser tests skip, or fail when CI=true.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
PACKAGES = ("chromium", "fonts-noto-cjk")


def installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and "install ok installed" in result.stdout


def main() -> int:
    if shutil.which("dpkg-query") is None:
        print("ensure_browser: not a Debian system; install chromium yourself", file=sys.stderr)
        return 0
    missing = [p for p in PACKAGES if not installed(p)]
    if not missing and CHROMIUM.exists():
        return 0
    if os.geteuid() != 0:
        print(
            f"ensure_browser: missing {', '.join(missing)} (run as root to install)",
            file=sys.stderr,
        )
        return 0
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"ensure_browser: apt-get install {' '.join(missing)}", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
