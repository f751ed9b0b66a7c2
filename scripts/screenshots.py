"""Screenshots of the dashboard for docs/: a lab run with a foreign DNAT rule on one node
(skewed, and undeclared traffic) and kube-proxy's rules alone on the other, served by a
read-only collector and drawn by headless Chromium. Run as root:
.venv/bin/python scripts/screenshots.py"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        sc = yaml.safe_load((ROOT / "examples" / "seed-bill-service.yaml").read_text())
        sc["name"] = "tampered"
        sc["extraRules"] = {"k8s-node2": [
            "-t nat -I PREROUTING 1 -d 10.1.122.241/32 -p tcp --dport 9999 -m statistic "
            "--mode random --probability 0.2 -j DNAT --to-destination 10.244.1.168:80"]}
        path = Path(d) / "tampered.yaml"
        path.write_text(yaml.safe_dump(sc))
        db = Path(d) / "lab.db"
        nat = [sys.executable, "-m", "natlens"]
        subprocess.run([*nat, "lab", "run", str(path), "--source", "netlink", "--db", str(db)],
                       check=True, stdout=subprocess.DEVNULL)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        web = subprocess.Popen([*nat, "collector", "--db", str(db), "--read-only", "--http",
                                f"127.0.0.1:{port}"], stdout=subprocess.PIPE, text=True)
        try:
            assert web.stdout is not None and web.stdout.readline().startswith("http")
            chromium = shutil.which("chromium")
            assert chromium, "chromium not installed"
            for name, query, size in (("dashboard", "", "1280,1500"),
                                      ("dashboard-client", "?client=10.244.1.169",
                                       "1280,1300")):
                subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                "--virtual-time-budget=10000", f"--window-size={size}",
                                f"--screenshot={ROOT / 'docs' / f'{name}.png'}",
                                f"http://127.0.0.1:{port}/{query}"], check=True,
                               capture_output=True)
        finally:
            web.terminate()
            web.wait(timeout=30)


if __name__ == "__main__":
    main()
