"""CSV, XLSX and PDF of a :class:`ReportDoc`.

The only module that imports openpyxl, matplotlib and fpdf2, and only inside the functions that
use them: the server starts without them, and the feeder actors never import this package.
Every format states the title, the period, the method notes, the data sources, when it was
generated and the report's content hash (SHA-256 of its figures, see :mod:`server.reports.doc`).
"""

from __future__ import annotations

import csv
import io
from datetime import datetime

from server.reports.doc import ReportDoc, fmt

FORMATS = ("CSV", "XLSX", "PDF")
MEDIA_TYPES = {"CSV": "text/csv; charset=utf-8",
               "XLSX": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
               "PDF": "application/pdf"}
EXTENSIONS = {"CSV": "csv", "XLSX": "xlsx", "PDF": "pdf"}
PDF_MAX_ROWS = 60  # rows of one table in the PDF; the CSV and XLSX hold them all


def render(doc: ReportDoc, fmt_: str) -> bytes:
    if fmt_ == "CSV":
        return to_csv(doc)
    if fmt_ == "XLSX":
        return to_xlsx(doc)
    if fmt_ == "PDF":
        return to_pdf(doc)
    raise ValueError(f"format {fmt_!r} is not one of {', '.join(FORMATS)}")


def _header(doc: ReportDoc) -> list[tuple[str, str]]:
    return [("title", doc.title), ("kind", doc.kind), ("period_start", doc.period_start.isoformat()),
            ("period_end", doc.period_end.isoformat()), ("generated_at", doc.generated_at.isoformat()),
            ("content_sha256", doc.content_sha256)]


def to_csv(doc: ReportDoc) -> bytes:
    """One file: header lines, then each table as a section ``# table: <name>`` with its own header."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for k, v in _header(doc):
        w.writerow([f"# {k}", v])
    for n in doc.method_notes:
        w.writerow(["# method", n])
    for s in doc.sources:
        w.writerow(["# source", s])
    if doc.no_data:
        w.writerow(["# no_data", doc.no_data])
    w.writerow([])
    w.writerow(["# table: summary"])
    w.writerow(["quantity", "value"])
    for k, v in doc.summary:
        w.writerow([k, "" if v is None else v])
    for t in doc.tables:
        w.writerow([])
        w.writerow([f"# table: {t.name}"] + ([t.note] if t.note else []))
        w.writerow(list(t.columns))
        for r in t.rows:
            w.writerow(["" if c is None else c for c in r])
    return buf.getvalue().encode("utf-8")


def to_xlsx(doc: ReportDoc) -> bytes:
    """A 'report' sheet (header, method, sources, summary) and one sheet per table; numbers stay numbers."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    wb = Workbook()
    ws = wb.active
    ws.title = "report"
    bold = Font(bold=True)
    for k, v in _header(doc):
        ws.append([k, v])
    ws.append([])
    for n in doc.method_notes:
        ws.append(["method", n])
    for s in doc.sources:
        ws.append(["source", s])
    if doc.no_data:
        ws.append(["no_data", doc.no_data])
    ws.append([])
    ws.append(["summary", "value"])
    ws.cell(ws.max_row, 1).font = bold
    for k, v in doc.summary:
        ws.append([k, v])
    ws.column_dimensions["A"].width = 48
    ws.column_dimensions["B"].width = 70
    for t in doc.tables:
        sheet = wb.create_sheet(t.name[:31])
        sheet.append(list(t.columns))
        for c in range(1, len(t.columns) + 1):
            sheet.cell(1, c).font = bold
        for r in t.rows:
            sheet.append(list(r))
        if t.note:
            sheet.append([])
            sheet.append([t.note])
    wb.properties.creator = "dms-headend"
    wb.properties.created = doc.generated_at.replace(tzinfo=None)
    wb.properties.modified = doc.generated_at.replace(tzinfo=None)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def _latin(text: str) -> str:
    """The PDF's core fonts are Latin-1: anything else is replaced, never an error."""
    return text.replace("\u2013", "-").replace("\u2014", "-").encode("latin-1", "replace").decode("latin-1")


def _chart_png(chart: object) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    x = list(chart.x)  # type: ignore[attr-defined]
    if not x and chart.hline is None:  # type: ignore[attr-defined]
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.0), dpi=110)
    try:
        n = max(len(chart.series), 1)  # type: ignore[attr-defined]
        width = 0.8 / n
        for k, (name, values) in enumerate(chart.series):  # type: ignore[attr-defined]
            pos = [i + (k - (n - 1) / 2) * width for i in range(len(values))]
            if chart.kind == "line":  # type: ignore[attr-defined]
                ax.plot(range(len(values)), values, label=name)
            else:
                ax.bar(pos, values, width=width, label=name)
        if chart.hline is not None:  # type: ignore[attr-defined]
            ax.axhline(chart.hline[1], color="red", linestyle="--", label=chart.hline[0])  # type: ignore[attr-defined]
        ax.set_xticks(range(len(x)))
        ax.set_xticklabels(x, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(chart.y_label)  # type: ignore[attr-defined]
        ax.set_title(chart.title, fontsize=9)  # type: ignore[attr-defined]
        ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        return buf.getvalue()
    finally:
        plt.close(fig)


def to_pdf(doc: ReportDoc) -> bytes:
    """A document for a regulator: title, period, generated-at, content hash, summary, method notes,
    data sources, charts, then the tables (long tables cut at PDF_MAX_ROWS rows, said so)."""
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_creation_date(doc.generated_at)
    pdf.set_title(_latin(doc.title))
    pdf.set_author("dms-headend")
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 15)
    pdf.multi_cell(0, 8, _latin(doc.title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    for k, v in (("Period", f"{doc.period_start.isoformat()} to {doc.period_end.isoformat()} (end exclusive)"),
                 ("Generated at", doc.generated_at.isoformat()), ("Content SHA-256", doc.content_sha256)):
        pdf.multi_cell(0, 5, _latin(f"{k}: {v}"), new_x="LMARGIN", new_y="NEXT")
    if doc.no_data:
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 10)
        pdf.multi_cell(0, 5, _latin(doc.no_data), new_x="LMARGIN", new_y="NEXT")
    heading = FontFace(emphasis="BOLD", fill_color=(220, 225, 235))

    def section(title: str) -> None:
        pdf.ln(3)
        pdf.set_font("Helvetica", "B", 11)
        pdf.multi_cell(0, 6, _latin(title), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 8)

    def table(columns: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
        pdf.set_font("Helvetica", "", 7 if len(columns) > 6 else 8)
        with pdf.table(headings_style=heading, line_height=4, text_align="LEFT") as t:
            head = t.row()
            for c in columns:
                head.cell(_latin(str(c)))
            for r in rows:
                row = t.row()
                for c in r:
                    row.cell(_latin(fmt(c)))  # type: ignore[arg-type]

    section("Summary")
    table(("Quantity", "Value"), [(k, v) for k, v in doc.summary])
    section("Method")
    for n in doc.method_notes:
        pdf.multi_cell(0, 4, _latin(f"- {n}"), new_x="LMARGIN", new_y="NEXT")
    section("Data sources")
    for s in doc.sources:
        pdf.multi_cell(0, 4, _latin(f"- {s}"), new_x="LMARGIN", new_y="NEXT")
    for chart in doc.charts:
        png = _chart_png(chart)
        if png is None:
            continue
        section(chart.title)
        pdf.image(io.BytesIO(png), w=180)
    for t in doc.tables:
        section(t.title)
        if t.note:
            pdf.multi_cell(0, 4, _latin(t.note), new_x="LMARGIN", new_y="NEXT")
        if not t.rows:
            pdf.multi_cell(0, 4, "(no rows)", new_x="LMARGIN", new_y="NEXT")
            continue
        table(t.columns, list(t.rows[:PDF_MAX_ROWS]))
        if len(t.rows) > PDF_MAX_ROWS:
            pdf.multi_cell(0, 4, f"... {len(t.rows) - PDF_MAX_ROWS} more rows in the CSV and XLSX exports",
                           new_x="LMARGIN", new_y="NEXT")
    pdf.set_y(-12)
    return bytes(pdf.output())


def stamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ")
