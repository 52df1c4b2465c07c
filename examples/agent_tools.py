"""An agent on the embedded 135M model with no middleware: it calls a tool only when needed.

``create_agent`` passes the emphasized ``SystemMessage`` and the tools to ``ChatPasta``, which
renders the tools into the prompt (SmolLM2's chat template has no tool support) and places
the emphasis. With ``tool_choice`` left to the model, ``ChatPasta`` decides from the model's
own likelihoods of the request under each tool's description versus a direct answer
(:mod:`pastalib.agent`): a call is then decoded under a grammar, an answer is written with the
tools hidden and no tool markup. After the tool has replied, the model answers. Run:

    python examples/agent_tools.py
"""

from __future__ import annotations

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolCall
from langchain_core.tools import tool

from langchain_pasta import ChatPasta, emphasized_message


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city. <em>Use the city name the user gave.</em>"""
    return f"It is sunny and 21 degrees in {city}."


@tool
def get_stock_price(ticker: str) -> str:
    """Get the latest stock price of a company by its ticker symbol, such as AAPL."""
    return f"{ticker} trades at 187.20 USD."


SYSTEM = emphasized_message(
    "You are a helpful assistant. <em>Answer with what the tool reports.</em>",
    role="system",
)
TOOL_QUESTION = "What's the weather like in Paris today?"
DIRECT_QUESTION = "Who wrote Romeo and Juliet?"


def ask(chat: ChatPasta, question: str) -> tuple[list[ToolCall], str]:
    """The agent's tool calls and its final answer (one line)."""
    assert isinstance(SYSTEM, SystemMessage)
    agent = create_agent(chat, [get_weather, get_stock_price], system_prompt=SYSTEM)
    state = agent.invoke({"messages": [HumanMessage(question)]})
    calls = [c for m in state["messages"] if isinstance(m, AIMessage) for c in m.tool_calls]
    return calls, " ".join(str(state["messages"][-1].content).split())


def main() -> None:
    steered_chat = ChatPasta.from_default(max_new_tokens=64)
    # alpha=1 leaves attention untouched; the weights are shared with the steered model.
    unsteered_chat = ChatPasta.from_default(max_new_tokens=64, alpha=1.0)
    for label, chat in (("steered", steered_chat), ("unsteered", unsteered_chat)):
        calls, answer = ask(chat, TOOL_QUESTION)
        call = f"{calls[0]['name']}({calls[0]['args']})" if calls else "none"
        print(f"{label} tool call: {call}")
        print(f"{label}: {answer}")
        calls, answer = ask(chat, DIRECT_QUESTION)
        print(f"{label} direct tool calls: {[c['name'] for c in calls]}")
        print(f"{label} direct: {answer}")


if __name__ == "__main__":
    main()
