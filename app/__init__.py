"""The web app (``cli.py app``): app.page."""
