"""Screenshots of the Dagster UI for the README: the asset graph and one asset's page with its metadata.

Starts `dagster-webserver` on 127.0.0.1 (a free port) with the project's workspace, on the project's
instance (DAGSTER_HOME, default `.dagster/`), and photographs it in headless Chromium (Debian's
`chromium`, driven by playwright-core from npm, installed into `build/playwright/`):

    docs/ui/asset-graph.png          the global asset lineage, every group expanded
    docs/ui/asset-<name>.png         the asset's overview page: status, description, metadata
    docs/ui/asset-<name>-plot.png    one of its metadata plots opened (when it has any)

Only the webserver runs (no daemon): sensors and schedules do not fire while it is up.

    .venv/bin/python scripts/screenshot_ui.py                        # after `make run`
    .venv/bin/python scripts/screenshot_ui.py --asset evaluation
    .venv/bin/python scripts/screenshot_ui.py --demo /tmp/reconet-ui   # the README's pictures

`--demo DIR` needs no earlier run: it makes a throw-away project in DIR (the small demo library,
its data, reports and Dagster instance), materialises the quick catalogue assets there (release_job
for every release, catalogue_job, report_job: about a minute), and photographs that instance.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAYWRIGHT_VERSION = "1.65.1"
PLAYWRIGHT_DIR = ROOT / "build" / "playwright"  # /build/ is ignored by git
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
]  # fmt: skip
ASSET_NODES_QUERY = "{ assetNodes { assetKey { path } groupName } }"


def say(message: str) -> None:
    print(f"screenshot_ui: {message}", file=sys.stderr, flush=True)


def apt_install(*packages: str) -> None:
    """Install Debian packages as scripts/setup.sh does: as root, or through sudo."""
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    if sudo and not shutil.which("sudo"):
        raise SystemExit(f"screenshot_ui: needs the Debian package(s) {' '.join(packages)}: "
                         f"apt-get install {' '.join(packages)} (as root)")  # fmt: skip
    say(f"installing Debian package(s): {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], check=True, env=env
    )


def ensure_chromium() -> str:
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists():
        say(f"Debian's chromium is not installed ({chromium})")
        apt_install("chromium")
    if not Path(chromium).exists():
        raise SystemExit(f"screenshot_ui: no Chromium at {chromium} (apt-get install chromium, or set CHROMIUM)")
    return chromium


def ensure_playwright() -> Path:
    """playwright-core (the library only, no browser download) in build/playwright/node_modules."""
    module = PLAYWRIGHT_DIR / "node_modules" / "playwright-core"
    if (module / "package.json").exists() and json.loads((module / "package.json").read_text())[
        "version"
    ] == PLAYWRIGHT_VERSION:
        return module
    if not (shutil.which("node") and shutil.which("npm")):
        apt_install("nodejs", "npm")
    PLAYWRIGHT_DIR.mkdir(parents=True, exist_ok=True)
    package = PLAYWRIGHT_DIR / "package.json"
    if not package.exists():
        package.write_text('{"private": true, "description": "playwright-core for scripts/screenshot_ui.py"}\n')
    say(f"installing playwright-core {PLAYWRIGHT_VERSION} into {PLAYWRIGHT_DIR.relative_to(ROOT)}/")
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", f"playwright-core@{PLAYWRIGHT_VERSION}"],
        cwd=PLAYWRIGHT_DIR, check=True, env={**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"},
    )  # fmt: skip
    return module


def use_demo_project(directory: Path) -> None:
    """Point every reconet and Dagster folder into ``directory`` (environment, inherited by the
    webserver) and materialise the quick catalogue assets there once."""
    directory = directory.resolve()
    os.environ.update(
        RECONET_LIBRARY=str(directory / "library"),
        RECONET_DATA_DIR=str(directory / "data"),
        RECONET_REPORTS_DIR=str(directory / "reports"),
        RECONET_STEMS_DIR=str(directory / "data" / "vocals"),
        MLFLOW_TRACKING_URI=f"sqlite:///{directory / 'mlflow.db'}",
        DAGSTER_HOME=str(directory / "dagster_home"),
    )
    import dagster as dg

    from assets.partitions import sync_release_partitions
    from ml import config
    from ml.catalogue.demo_library import generate_demo_library
    from pipeline.cli import QUIET_CONSOLE, prepare_dagster_home
    from pipeline.definitions import defs

    params = config.load_params()
    paths = config.paths(params)
    if not paths.library.is_dir():
        say(f"making the small demo library in {paths.library}")
        generate_demo_library(paths.library, size="small")
    prepare_dagster_home(paths)
    with dg.DagsterInstance.get() as instance:
        sync_release_partitions(instance, paths, params)
        if instance.get_latest_materialization_event(dg.AssetKey("metadata_eda")) is not None:
            return
        keys = instance.get_dynamic_partitions("releases")
        for job_name, targets in (("release_job", keys), ("catalogue_job", [None]), ("report_job", [None])):
            for key in targets:
                say(f"materialising: {job_name} {key or ''}")
                result = defs.resolve_job_def(job_name).execute_in_process(
                    instance=instance, partition_key=key, raise_on_error=False, run_config=QUIET_CONSOLE
                )
                if not result.success:
                    raise SystemExit(f"screenshot_ui: {job_name} failed{' for ' + key if key else ''}")


def latest_metadata(asset: list[str]) -> dict:
    """The asset's latest materialisation's metadata on the instance (DAGSTER_HOME); exits if none."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None:
        raise SystemExit(
            f"screenshot_ui: {'/'.join(asset)} has no materialisation in DAGSTER_HOME={os.environ['DAGSTER_HOME']}: "
            "run `make run` first, pick another asset with --asset, or use --demo DIR"
        )
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    if answer.get("errors"):
        raise RuntimeError(f"GraphQL: {answer['errors']}")
    return answer["data"]


def wait_for_asset_graph(url: str, server: subprocess.Popen, log: Path, timeout: float = 300) -> list[dict]:
    """Wait until the webserver answers and its code location has loaded; return the asset nodes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"screenshot_ui: dagster-webserver exited:\n{log.read_text()[-3000:]}")
        try:
            nodes = graphql(url, ASSET_NODES_QUERY)["assetNodes"]
            if nodes:
                return nodes
        except (urllib.error.URLError, ConnectionError, TimeoutError, RuntimeError):
            pass
        time.sleep(1)
    raise SystemExit(f"screenshot_ui: the webserver did not serve the asset graph in {timeout:.0f} s:\n"
                     f"{log.read_text()[-3000:]}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--asset", default="metadata_eda", help="the asset whose page to photograph")
    parser.add_argument("--plot", help="metadata key of the plot to open (default: the asset's first plot_*)")
    parser.add_argument("--no-plot", action="store_true", help="no picture of an opened metadata plot")
    parser.add_argument("--demo", type=Path, metavar="DIR", help="a throw-away demo project in DIR (see above)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ui", help="where the PNGs go")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args(argv)

    chromium = ensure_chromium()
    playwright = ensure_playwright()
    if args.demo:
        use_demo_project(args.demo)
    else:
        from ml import config
        from pipeline.cli import prepare_dagster_home

        prepare_dagster_home(config.paths())  # the project's instance, as `reconet ui` / `make ui` use it
    asset = args.asset.split("/")
    metadata = latest_metadata(asset)
    plot = None
    if not args.no_plot:
        plots = [k for k, v in metadata.items() if k.startswith("plot_") and "data:image/" in str(v)]
        plot = args.plot or (plots[0] if plots else None)
        if plot and plot not in metadata:
            raise SystemExit(f"screenshot_ui: {args.asset} has no metadata {plot!r}; it has {sorted(metadata)}")

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="reconet-screenshots-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "webserver.log"
    say(f"starting dagster-webserver on {url} (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
    with open(log, "w") as log_file:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-webserver")), "-h", "127.0.0.1", "-p", str(port),
             "-w", "workspace.yaml"],
            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        nodes = wait_for_asset_graph(url, server, log)
        names = [n["assetKey"]["path"][-1] for n in nodes]
        if asset not in [n["assetKey"]["path"] for n in nodes]:
            raise SystemExit(f"screenshot_ui: no asset {args.asset!r} in the definitions; there are {sorted(names)}")
        name = "-".join(asset)
        shots = {
            "graph": {"out": str(args.out / "asset-graph.png"), "assets": names},
            "asset": {"out": str(args.out / f"asset-{name}.png"), "path": asset, "metadataKeys": list(metadata)},
            "plot": {"out": str(args.out / f"asset-{name}-plot.png"), "key": plot} if plot else None,
        }
        browser = {
            "playwright": str(playwright), "chromium": chromium, "userDataDir": str(work / "chromium-profile"),
            "flags": CHROMIUM_FLAGS, "url": url, "width": args.width, "height": args.height, "timeoutMs": 120_000,
        }  # fmt: skip
        subprocess.run(
            ["node", str(ROOT / "scripts" / "screenshot_ui.js"), json.dumps({**browser, **shots})], check=True
        )
    except subprocess.CalledProcessError:
        raise SystemExit("screenshot_ui: the browser could not take the screenshots (see above)") from None
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        shutil.rmtree(work, ignore_errors=True)
    for shot in filter(None, shots.values()):
        png = Path(shot["out"])
        if not png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"):
            raise SystemExit(f"screenshot_ui: {png} is not a PNG")
        print(png.relative_to(ROOT) if png.is_relative_to(ROOT) else png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
