"""The genai-audit dashboard: a Streamlit app over the audit store (``genai-audit dashboard``).

:mod:`dashboard.data` shapes what the pages show (no Streamlit), :mod:`dashboard.charts`
draws it (Altair), :mod:`dashboard.app` is the Streamlit script and :mod:`dashboard.cli`
the command. The dashboard reads only the store and its report files; it never imports
``probes``.
"""
