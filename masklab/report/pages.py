"""The index pages of `analyze` and `compare`: one look, one writer (`write_page`), every link relative to the
page."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from masklab import files as W
from masklab.analysis.compare import CHANCES, PAIR_SETS
from masklab.report.base import CSV_MAX_ROWS, DEFAULT_FORMATS, DEFAULT_N_RANDOM, Report
from masklab.store.catalog import KEY_NUMBERS_FILE, SETTINGS_FILE
from masklab.units import percent, shown_by_metric, shown_settings


def _reading_notes(report: Report) -> str:
    """The page's short guide to its numbers (with this report's number of random sets)."""
    test = report.tables.get("structure_vs_random")
    sets = int(test["n_random"].iloc[0]) if test is not None and len(test) else DEFAULT_N_RANDOM
    return _READING_NOTES.format(sets=sets, floor=f"{1 / (1 + sets):.2g}")


_READING_NOTES = """<p class="notes"><b>Reading these numbers.</b> <i>sd of one random pair</i>: how far the masks'
mean overlap lies from chance, in standard deviations of the overlap of ONE pair of independent random masks
with the same per-layer counts (exact hypergeometric null); it does not grow with the number of masks. The mean
over all pairs is far more precise than one pair: the table <code>layer_summary</code> also gives the sd of the
mean under the null (<code>chance_se</code>, exact: overlaps of random pairs that share a mask are
uncorrelated), the matching test statistic (<code>z_mean_vs_chance</code>) and the jackknife standard error
over masks (<code>se_masks</code>). <i>Cluster structure</i>: the best silhouette of the masks against {sets} sets
of random masks; the p-value cannot go below 1 / (1 + sets) = {floor}, the effect is in sd of the random sets,
and "small but detectable" means p &lt; 0.05 with a silhouette of at most 0.25 (no substantial clusters,
Kaufman &amp; Rousseeuw). Correlations are only given from 10 pairs.</p>"""


def _seconds_html(seconds: dict[str, float]) -> str:
    if not seconds:
        return "<p>(not timed)</p>"
    rows = "".join(f"<tr><th>{html.escape(name)}</th><td>{value:.2f} s</td></tr>" for name, value in seconds.items())
    return (f"<table>{rows}<tr><th>total</th><td>{sum(seconds.values()):.2f} s</td></tr></table>"
            "<p class=\"notes\">Stages count their own computation (imports they trigger included); "
            "<i>figures</i> is what drawing and writing the figure files added: with a core to spare they are "
            "drawn by a second process while the stages run, and only the wait for the last ones is counted. "
            "Starting Python and the first imports come before and are not counted.</p>")


PAGE_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse}th,td{text-align:left;padding:2px 12px;border-bottom:1px solid #ddd}
td.num{text-align:right;font-variant-numeric:tabular-nums}thead th{border-bottom:2px solid #999}
figure{margin:2em 0}img{max-width:100%}figcaption{color:#444}code{background:#f4f4f4}
.notes{color:#444;font-size:90%;max-width:60em}
.warning{background:#fff4ce;border-left:4px solid #c90;padding:.5em 1em;max-width:60em}
dl.pairs dt{font-weight:bold}dl.pairs dd{margin:0 0 .4em 1.5em}"""


UNITS_NOTE = ("<p class=\"notes\"><b>Units.</b> Percent matching and accuracy in %, accuracy differences and "
              "error barriers in percentage points, the Jaccard index and normalised Hamming distance as "
              "fractions, losses and loss barriers in nats (mean cross-entropy). The tables hold fractions "
              "throughout.</p>")


def write_page(path: Path, title: str, body: str) -> Path:
    """Write an index page (`analyze`'s and `compare`'s alike): the shared style around `body`, atomically
    (a reader never sees half a page). Every link in `body` must be relative to the page's folder."""
    page = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
            f"<style>{PAGE_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
    W.atomic_write(path, page.encode(), durable=False)
    return path


def relative(target: Path, page_dir: Path) -> str:
    """`target` as a link from a page in `page_dir` (POSIX separators; never a machine path)."""
    return Path(os.path.relpath(Path(target).resolve(), Path(page_dir).resolve())).as_posix()


def warnings_html(report: Report) -> str:
    """What the reader must know before the numbers (an unfinished run), in a box at the top of the page."""
    return "".join(f'<p class="warning"><b>Note:</b> {html.escape(w)}.</p>' for w in report.warnings)


def _key_numbers_html(key_numbers: pd.DataFrame) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(name))}</th><td>{html.escape(str(text))}</td></tr>"
                   for name, text in zip(key_numbers["name"], key_numbers["text"]))
    return f"<h2>Key numbers</h2><table>{rows}</table>"


def _figures_html(report: Report, page_dir: Path, formats: tuple[str, ...]) -> str:
    def svg_link(path: Path) -> str:
        svg = path.with_suffix(".svg")
        return f' (<a href="{html.escape(relative(svg, page_dir))}">SVG</a>)' \
            if "svg" in formats and svg.exists() else ""

    return "".join(
        f'<figure><img src="{html.escape(relative(path, page_dir))}" alt="{html.escape(name)}"><figcaption><b>'
        f"{html.escape(name)}</b>: {html.escape(report.captions[name])}{svg_link(path)}</figcaption></figure>"
        for name, path in report.figures.items())


def _tables_html(report: Report, folder: Path, page_dir: Path) -> str:
    where = relative(folder, page_dir)

    def link(name: str) -> str:
        files = [f"{name}{s}" for s in (".csv", ".parquet") if (folder / f"{name}{s}").exists()]
        first = files[0] if files else f"{name}.csv"
        other = "".join(f' (<a href="{html.escape(where)}/{html.escape(f)}">{html.escape(f.rsplit(".", 1)[1])}</a>)'
                        for f in files[1:])
        return f'<a href="{html.escape(where)}/{html.escape(first)}">{html.escape(name)}</a>{other}'

    items = "".join(f"<li>{link(name)}: {len(t):,} rows</li>" for name, t in report.tables.items())
    pairs = ""
    if report.pairs is not None:
        stored = report.pairs.quantities()
        rel = relative(report.pairs.folder, page_dir)
        listed = "".join(f"<li><code>{html.escape(str(r.file))}</code>: {html.escape(str(r.quantity))}, layer "
                         f"{html.escape(str(r.layer))} ({html.escape(str(r.dtype))}, {int(r.bytes):,} bytes)</li>"
                         for r in stored.itertuples())
        n = report.pairs.n
        pairs = (f"<h3>Per-pair matrices</h3><p>Every pair of the {n:,} masks, as {n:,} x {n:,} matrices (numpy "
                 f".npy, memory-mappable: <code>numpy.load(path, mmap_mode=\"r\")</code>) in "
                 f"<code>{html.escape(rel)}/</code>: intersection counts |a AND b| per layer, from which every "
                 "distance follows exactly (<code>masklab.analysis.distances.stored_intersections</code>; "
                 "<code>Report.distances()</code> gives the long table).</p>"
                 f"<ul>{listed}</ul>")
    return (f"<h2>Tables</h2><p>Parquet, and CSV for tables of at most {CSV_MAX_ROWS:,} rows, in "
            f"<code>{html.escape(where)}/</code> (relative to this page).</p><ul>{items}</ul>{pairs}")


def _settings_html(report: Report) -> str:
    """The settings of this analysis (its id names its folders) and the sample each stage used."""
    settings = report.settings
    if settings is None:
        return ""
    changed = settings.to_dict(non_default=True)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape('all' if v is None else str(v))}"
                   f"{' (set)' if k in changed else ''}</td></tr>" for k, v in settings.to_dict().items())
    samples = report.tables.get("samples")
    sampled = ""
    if samples is not None and len(samples):
        lines = "".join(
            f"<tr><th>{html.escape(str(r.stage))}</th><td>{int(r.n_used):,} of {int(r.n_total):,} {r.unit}</td>"
            f"<td>{html.escape(str(r.how))}</td><td>{'-' if pd.isna(r.seed) else int(r.seed)}</td></tr>"
            for r in samples.itertuples())
        sampled = ("<h3>Samples</h3><p>What each stage that could not take everything used (the table "
                   "<code>samples</code>; each stage's own table repeats it in sample_n, sample_of, sample_seed)."
                   f"</p><table><thead><tr><th>stage</th><th>used</th><th>how</th><th>seed</th></tr></thead>"
                   f"<tbody>{lines}</tbody></table>")
    return (f"<h2>Settings of this analysis: {html.escape(settings.id)}</h2><p>{html.escape(settings.describe())}. "
            "Another analysis of this run with other settings has a folder and a page of its own; "
            "<a href=\"../index.html\">every analysis of this run</a>.</p>"
            f"<table>{rows}</table>{sampled}")


def html_table(table: pd.DataFrame) -> str:
    """A DataFrame as a plain table in the pages' style (numbers right-aligned), without its index."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(
        f'<td class="num">{html.escape(str(v))}</td>' if isinstance(v, (int, float, np.number)) or
        (isinstance(v, str) and v[:1].isdigit()) else f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in table.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


SOURCE_WORDS = {"set": "set", "method": "the method's default", "default": "default"}


def settings_html(run) -> str:
    """The run's settings (`Run.settings`: method, sparsity, epochs, lr, batch size, seeds, dataset, model, ...)
    as a readable table: the value used and where it comes from."""
    table = shown_settings(run.settings())
    table = table.assign(source=[SOURCE_WORDS[s] for s in table["source"]])
    return html_table(table.rename(columns={"source": "from"}))


def write_index(run, report: Report, out: Path, tables: Path, formats: tuple[str, ...] = DEFAULT_FORMATS) -> Path:
    mean_acc = float(run.table["test_acc"].mean())
    body = (f"<h1>Mask landscape of {html.escape(run.id)}</h1>\n"
            f"{warnings_html(report)}<p>{len(run.ids)} masks, mean final test accuracy {percent(mean_acc)}.</p>\n"
            f"<h2>Settings</h2>{settings_html(run)}\n"
            f"{_key_numbers_html(report.key_numbers)}\n{_reading_notes(report)}\n{UNITS_NOTE}\n"
            f"{_settings_html(report)}\n"
            f"<h2>Figures</h2>{_figures_html(report, out, formats)}\n"
            f"{_tables_html(report, tables, out)}\n"
            f"<h2>Where the time went</h2>{_seconds_html(report.seconds)}")
    sid = f" ({report.settings.id})" if report.settings is not None else ""
    return write_page(out / "index.html", f"masklab: {run.id}{sid}", body)


RUN_INDEX_MARK = "<!-- masklab: the analyses of one run -->"
EARLIER_PAGE = "index-earlier.html"


def write_run_index(run, folder: Path) -> Path:
    """``figures/<run id>/index.html``: every analysis of the run (from ``analysis/*/settings.json``), with its
    settings, when it ran and a link to its page. A page an older masklab wrote there (one analysis per run,
    before analyses were kept per settings) is kept as index-earlier.html and listed, so its figures and tables
    stay linked."""
    page = folder / "index.html"
    if page.is_file() and not page.is_symlink() and RUN_INDEX_MARK not in page.read_text(errors="replace"):
        os.replace(page, folder / EARLIER_PAGE)
    rows = []
    analysis = run.path / "analysis"
    for sub in sorted(p for p in analysis.iterdir() if p.is_dir()) if analysis.is_dir() else []:
        try:
            settings = json.loads((sub / SETTINGS_FILE).read_text())
        except (OSError, ValueError):
            continue
        own = folder / sub.name / "index.html"
        target = own if own.is_file() else Path(settings["page"]) if settings.get("page") else None
        link = (f'<a href="{html.escape(relative(target, folder))}">{html.escape(sub.name)}</a>'
                if target is not None and target.is_file() else html.escape(sub.name))
        changed = settings.get("settings") or {}
        words = ", ".join(f"{k} = {'all' if v is None else v}" for k, v in changed.items()) or "all defaults"
        numbers = (sub / KEY_NUMBERS_FILE).is_file()
        rows.append(f"<tr><td>{link}</td><td>{html.escape(words)}</td><td>{html.escape(str(settings.get('created')))}"
                    f"</td><td class=\"num\">{settings.get('n_masks')}</td><td>{'yes' if numbers else 'no'}</td></tr>")
    earlier = (f'<p>An analysis by an earlier masklab (one per run, its tables directly in '
               f'<code>analysis/</code>): <a href="{EARLIER_PAGE}">{EARLIER_PAGE}</a>.</p>'
               if (folder / EARLIER_PAGE).is_file() else "")
    body = (f"{RUN_INDEX_MARK}\n<h1>Analyses of {html.escape(run.id)}</h1>\n<p>{len(run.ids):,} masks now. Each "
            "analysis keeps its tables in <code>runs/&lt;run&gt;/analysis/&lt;settings id&gt;/</code> and its "
            "figures and page in the folder of the same name here; <code>masklab results</code> lists them "
            "with their key numbers.</p>\n<table><thead><tr><th>settings id</th><th>settings</th><th>when</th>"
            f"<th>masks</th><th>key numbers</th></tr></thead><tbody>{''.join(rows)}</tbody></table>\n{earlier}")
    return write_page(page, f"masklab: analyses of {run.id}", body)


def write_compare_index(run_a, run_b, report: Report, out: Path, formats: tuple[str, ...] = DEFAULT_FORMATS
                         ) -> Path:
    comparison = report.tables["comparison"]
    present = [p for p in PAIR_SETS if p in comparison.columns]
    pairs = "".join(
        f"<dt>{html.escape(p)}</dt><dd>the mean over every pair of {html.escape(PAIR_SETS[p])}.</dd>"
        for p in present) + "".join(
        f"<dt>{html.escape(c)}</dt><dd>what {html.escape(CHANCES[c])} would give (exact expectation).</dd>"
        for c in CHANCES if c in comparison.columns)

    def run_line(side: str, run) -> str:
        acc = float(run.table["test_acc"].mean()) if len(run.table) else float("nan")
        return (f"<li><b>{side}</b>: {html.escape(run.id)}: {len(run.ids)} masks, mean final test accuracy "
                f"{percent(acc)}</li>")

    body = (f"<h1>{html.escape(run_a.id)} vs {html.escape(run_b.id)}</h1>\n"
            f"{warnings_html(report)}<ul>{run_line('A', run_a)}{run_line('B', run_b)}</ul>\n"
            f"<h2>Settings</h2>{html_table(settings_side_by_side(run_a, run_b))}\n"
            f"{_key_numbers_html(report.key_numbers)}\n"
            f"<h2>Per layer</h2><p>Percent matching (%) and Jaccard index (fraction), each the mean over a set of "
            f"mask pairs:</p><dl class=\"pairs\">{pairs}</dl>{html_table(comparison_text(comparison))}\n{UNITS_NOTE}\n"
            f"<h2>Figures</h2>{_figures_html(report, out, formats)}\n"
            f"{_tables_html(report, out, out)}\n"
            f"<h2>Where the time went</h2>{_seconds_html(report.seconds)}")
    return write_page(out / "index.html", f"masklab compare: {run_a.id} vs {run_b.id}", body)


def settings_side_by_side(run_a, run_b) -> pd.DataFrame:
    """Both runs' settings as text, one row per setting, columns A and B (blank where a run has no such
    setting)."""
    a = shown_settings(run_a.settings()).set_index("setting")["value"]
    b = shown_settings(run_b.settings()).set_index("setting")["value"]
    order = list(a.index) + [s for s in b.index if s not in a.index]
    return pd.DataFrame({"setting": order, "A": [a.get(s, "") for s in order], "B": [b.get(s, "") for s in order]})


def comparison_text(comparison: pd.DataFrame) -> pd.DataFrame:
    """The comparison table as shown (pages, command line): matching in %, Jaccard as a fraction; each set of
    pairs beside its own chance; one `chance` column when the three are equal (runs of equal counts)."""
    comparison = comparison.copy()
    chances = [c for c in CHANCES if c in comparison.columns]
    values = comparison[chances].to_numpy(dtype=float)
    if chances and (np.nanmax(values, axis=1) - np.nanmin(values, axis=1) < 1e-12).all():
        comparison = comparison.drop(columns=chances).assign(chance=np.nanmean(values, axis=1))
        columns = [c for c in comparison.columns if c != "chance"] + ["chance"]
    else:  # each set beside its chance
        columns = ["layer", "metric"]
        for c in comparison.columns:
            if c in PAIR_SETS:
                columns.append(c)
                if f"chance {c}" in comparison.columns:
                    columns.append(f"chance {c}")
    comparison = comparison[columns]
    shown = shown_by_metric(comparison, [c for c in comparison.columns if c in PAIR_SETS or c.startswith("chance")])
    shown["layer"] = ["whole network" if str(v) == "all" else str(v) for v in shown["layer"]]
    return shown
