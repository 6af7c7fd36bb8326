"""A sweep's report, built once as data and rendered three ways.

``sweep`` and ``retrain`` build the report's sections (``blocks``: paragraphs, tables, lists, figures) from an
analysis and from retrain.json; ``render`` writes sections as console text, Markdown and one self-contained HTML
page (a Jinja2 template, ``templates/report.html.j2``); ``documents`` names the files and console text this makes;
``format`` is how every number is shown.
"""
