"""The README's Python examples run as written (on the tiny dataset instead of the default)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_examples_run(tiny_dir, home, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    code = "\n".join(blocks)
    code = code.replace(
        'DATA = ".miso-bench/data/synthetic-alaska-default-seed0"', f'DATA = "{tiny_dir}"'
    )
    assert str(tiny_dir) in code
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "tax_order: kept" in out
