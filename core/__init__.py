"""UUSIC Viewer core library: catalog, schema, imaging, geometry, models, engine, API and CLI.

Plain Python: nothing in ``core`` imports streamlit.
"""

__version__ = "0.1.0"
