"""An agent whose system prompt and tool description are emphasized (create_agent + ChatPasta).

``create_agent`` passes the emphasized ``SystemMessage`` and the tools to ``ChatPasta``, which
renders the tools into the prompt (SmolLM2's chat template has no tool support), places the
emphasis of both, and parses ``<tool_call>`` blocks back into tool calls. A 135M model seldom
calls a tool on its own, so a small middleware forces the first call (``tool_choice="any"``,
decoded under a grammar) and lets the model answer freely once the tool has replied. Run:

    python examples/agent_tools.py
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, wrap_model_call
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from langchain_pasta import ChatPasta, emphasized_message


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city. <em>Use the city name the user gave.</em>"""
    return f"It is sunny and 21 degrees in {city}."


@wrap_model_call
def call_a_tool_first(request: ModelRequest, handler: Callable[[ModelRequest], Any]) -> Any:
    """Forces a tool call until a tool has answered."""
    if not any(isinstance(message, ToolMessage) for message in request.messages):
        request = request.override(tool_choice="any")
    return handler(request)


SYSTEM = emphasized_message(
    "You are a weather assistant. <em>Answer with the weather the tool reports.</em>",
    role="system",
)
QUESTION = "What's the weather like in Paris today?"


def run(chat: ChatPasta) -> tuple[dict[str, Any], str]:
    agent = create_agent(chat, [get_weather], system_prompt=SYSTEM, middleware=[call_a_tool_first])
    state = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    calls = [c for m in state["messages"] if isinstance(m, AIMessage) for c in m.tool_calls]
    answer = " ".join(str(state["messages"][-1].content).split())  # one line
    return calls[0]["args"] if calls else {}, answer


def main() -> None:
    steered_chat = ChatPasta.from_default(max_new_tokens=32)
    # alpha=1 leaves attention untouched; the weights are shared with the steered model.
    unsteered_chat = ChatPasta.from_default(max_new_tokens=32, alpha=1.0)
    for label, chat in (("steered", steered_chat), ("unsteered", unsteered_chat)):
        args, answer = run(chat)
        print(f"{label} tool call: get_weather({args})")
        print(f"{label}: {answer}")


if __name__ == "__main__":
    main()
