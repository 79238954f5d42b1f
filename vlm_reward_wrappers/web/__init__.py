"""Pages for people: the label browser (``vlm-reward inspect``), the human labeler's page, and the
page pieces they share with the audit report. Served by FastAPI and uvicorn (the ``web`` extra)."""
