"""Users' type checkers see the packages' types (py.typed): a typed script passes mypy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GOOD = """
from langchain_core.messages import AIMessage
from langchain_pasta import ChatPasta, EmphasizedChatPromptTemplate, emphasized_message
from pastalib import PASTA, PastaError

def build(chat: ChatPasta) -> AIMessage:
    prompt = EmphasizedChatPromptTemplate.from_messages([("human", "<em>{q}</em>")])
    value = prompt.invoke({"q": "hi"})
    message = emphasized_message("Be <em>brief</em>.", role="system")
    reply: AIMessage = chat.invoke([message, *value.to_messages()])
    return reply

def steer(pasta: PASTA) -> list[str]:
    try:
        return pasta.generate(["hi"], [[(0, 2)]], max_new_tokens=4)
    except PastaError:
        return []
"""
BAD = GOOD + "\nwrong: int = PASTA.generate\n"


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "user_script.py"
    script.write_text(source)
    # The installed packages, as a user's project sees them (not this repo's mypy config).
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
        timeout=600,
    )


def test_a_user_script_type_checks(tmp_path: Path) -> None:
    good = _mypy(tmp_path, GOOD)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "missing library stubs" not in good.stdout
    bad = _mypy(tmp_path, BAD)
    assert bad.returncode == 1 and "user_script.py" in bad.stdout, bad.stdout
