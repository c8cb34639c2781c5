"""Reports: exporters (pure functions ``Annotation -> bytes``), the viewer page and its routes."""

from callannotate.reports.exporters import FORMATS, ExportFormat, export, get_format

__all__ = ["FORMATS", "ExportFormat", "export", "get_format"]
