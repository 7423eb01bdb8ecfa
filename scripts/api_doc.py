"""Write docs/api.md from the Gateway API table (gatewayclient/spec.py).

    .venv/bin/python scripts/api_doc.py

tests/test_api_spec.py fails while the page and the table disagree.
"""

from pathlib import Path

from pygatewayworker.gatewayclient.spec import render_markdown

if __name__ == "__main__":
    page = Path(__file__).resolve().parent.parent / "docs" / "api.md"
    page.write_text(render_markdown(), encoding="utf-8")
    print(f"wrote {page}")
