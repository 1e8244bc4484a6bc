"""`report.html`: build (assembly, and the report after `must adapt`), data (what to show, read from the run
folder), sections (what each section says), html (style, tables, thumbnails, the page), plots (matplotlib figures)."""
