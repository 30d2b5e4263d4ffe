"""Make the docs' pictures from a real trained run: its evaluation report's plots, the try-it page
answering a review, and the endpoint against a hand-written server as a chart.

    IMDB_DATA_DIR=<imdb parquet folder> .venv/bin/python scripts/docs_pictures.py --run <run folder>

The run is one ``bash scripts/quickstart.sh`` leaves (its last line names it). Steps, each a real
component: ``python -m ray_jobs.evaluate`` on 1,000 test reviews (the report's PNGs); the checkpoint
served on a loopback Ray and its page driven by Debian's Chromium (``scripts/setup-system.sh``
installs it); ``python -m bench.serve_throughput --peer plain`` in this process, charted. Writes
``docs/img/*.png`` and ``docs/img/SOURCES.md`` (the run, commit, date, machine and command behind
each picture). Needs the machine to itself for the serving chart, as any benchmark does.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ray_jobs  # noqa: E402,F401  (imported before Ray: keeps the Ray started here on loopback)

# isort: split
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.common import commit  # noqa: E402

IMG = ROOT / "docs" / "img"
REPORT_PLOTS = ("training_curves", "confusion_matrix", "confidence", "reliability", "accuracy_by_length", "top_words")
CHROMIUM = Path("/usr/bin/chromium")


def cpu_model() -> str:
    """The CPU's model name and core count, as /proc/cpuinfo says."""
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    return f"{names[0] if names else platform.machine()}, {len(names) or '?'} cores"


def report_plots(run: Path, out: Path) -> str:
    """The evaluation report of ``run``'s best epoch on 1,000 test reviews; copies its plots to ``out``."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "ray_jobs.evaluate", "--checkpoint", str(run), "--max-samples", "1000",
                   "--attribution-samples", "50", "--output-dir", tmp, "--overwrite"]
        subprocess.run(command, cwd=ROOT, check=True)
        for name in REPORT_PLOTS:
            shutil.copy(Path(tmp) / f"{name}.png", out / f"report_{name}.png")
    return "python -m ray_jobs.evaluate --checkpoint <run> --max-samples 1000 --attribution-samples 50"


def page_screenshot(run: Path, out: Path) -> str:
    """The try-it page of ``run`` served on a loopback Ray, after predicting its positive sample with key words."""
    import ray
    from playwright.sync_api import expect, sync_playwright
    from ray import serve

    from bench.common import deploy

    if not CHROMIUM.is_file():
        sys.exit(f"Chromium is missing ({CHROMIUM}): bash scripts/setup-system.sh installs it")
    url = deploy(run).removesuffix("/v1/predict")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 900, "height": 820})
            page.goto(url + "/")
            page.click('.sample[data-kind="positive"]')  # the page's own sample review
            if page.locator("#explain").count():
                page.check("#explain")
            page.click("#predict")
            expect(page.locator("#result")).to_be_visible(timeout=120_000)
            expect(page.locator("#explained")).to_be_visible(timeout=120_000)  # the key words come after the answer
            page.screenshot(path=str(out / "serve_page.png"), full_page=True)
            browser.close()
    finally:
        serve.shutdown()
        ray.shutdown()
    return "the run served by bench.common.deploy on 127.0.0.1, its page in Chromium, the positive sample with key words"


def serving_chart(run: Path, out: Path) -> str:
    """``bench.serve_throughput --peer plain`` on ``run``'s model, as reviews/s per concurrency."""
    from bench.serve_throughput import main as serve_throughput
    from sentiment.layout import resolve

    model = resolve(run).location
    args = ["--peer", "plain", "--checkpoint", model, "--backends", "auto", "--requests", "400"]
    rows = pd.DataFrame(serve_throughput(args)["rows"])
    fig, ax = plt.subplots(figsize=(7, 4))
    http = rows[rows.server != "in-process"]  # the median of the interleaved rounds
    table = http.pivot_table(index="concurrency", columns="server", values="reviews_per_s", aggfunc="median", sort=False)
    table.plot.bar(ax=ax, rot=0)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("reviews/s (one review per request)")
    ax.set_title("The endpoint against a hand-written FastAPI server, same cores and client")
    fig.tight_layout()
    fig.savefig(out / "serving_vs_plain.png", dpi=110)
    plt.close(fig)
    return "python -m bench.serve_throughput " + " ".join(args).replace(model, "<model folder>")


def main(argv: list[str] | None = None) -> None:
    """Make every picture and write where each came from."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="a trained run folder (the quickstart's)")
    args = parser.parse_args(argv)
    IMG.mkdir(parents=True, exist_ok=True)
    made = {"report_*.png": report_plots(args.run, IMG), "serve_page.png": page_screenshot(args.run, IMG),
            "serving_vs_plain.png": serving_chart(args.run, IMG)}
    machine = cpu_model()
    lines = ["# Where the pictures come from", "",
             f"Made by `scripts/docs_pictures.py` on {datetime.date.today()}, commit {commit()}, {machine}, "
             f"from the run `{args.run.name}` (`bash scripts/quickstart.sh`).", "",
             "| picture | made by |", "| --- | --- |", *[f"| `{name}` | `{how}` |" for name, how in made.items()]]
    (IMG / "SOURCES.md").write_text("\n".join(lines) + "\n")
    print(f"pictures in {IMG}: {sorted(p.name for p in IMG.glob('*.png'))}")


if __name__ == "__main__":
    main()
