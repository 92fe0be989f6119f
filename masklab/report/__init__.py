"""`masklab analyze` and `masklab compare`: run the analyses, write their tables, figures and an index page.

stages.py: `analyze`, one short function per stage; comparison.py: `compare`; pages.py: the index pages (one
writer, one style); base.py: the Report both return and what their stages share.
"""

from masklab.report.base import FORMATS, Report, check_formats, seconds_text
from masklab.report.comparison import compare
from masklab.report.pages import PAGE_STYLE, comparison_text
from masklab.report.stages import analyze

__all__ = ["FORMATS", "PAGE_STYLE", "Report", "analyze", "check_formats", "compare", "comparison_text",
           "seconds_text"]
