"""Regulatory reports: IEEE 1366 reliability from interruption records, power quality from the
historian, operations and audit from the graph store; exported as CSV, XLSX and PDF.

Modules: :mod:`.imports` (CSV history, validated whole), :mod:`.data` (reads records and customers
served from the store), :mod:`.builders` (one report's tables from the data, no rendering),
:mod:`.render` (CSV/XLSX/PDF; the only module importing openpyxl, matplotlib and fpdf2, lazily),
:mod:`.jobs` (report jobs and artefacts), :mod:`.scheduler` (periodic reports, APScheduler).
Nothing here is imported by the feeder actors.
"""
