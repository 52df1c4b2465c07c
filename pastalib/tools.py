r"""Tool rendering, tool-call parsing and output grammars, for any chat front end.

Tools use the Hermes/Qwen convention that many small instruct models were tuned on. When the
chat template does not render tools itself, this block is added to the system message::

    # Tools

    You may call one or more functions to assist with the user query.

    You are provided with function signatures within <tools></tools> XML tags:
    <tools>
    {"type": "function", "function": {"name": ..., "description": ..., "parameters": ...}}
    </tools>

    For each function call, return a json object with function name and arguments within
    <tool_call></tool_call> XML tags:
    <tool_call>
    {"name": <function-name>, "arguments": <args-json-object>}
    </tool_call>

The model answers with ``<tool_call>\n{json}\n</tool_call>`` blocks, which are parsed back
into ``AIMessage.tool_calls``. Past tool calls and tool results are rendered the same way.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pastalib.markup import parse_emphasis
from pastalib.spans import Markers, Span, normalize_spans

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "parse_tool_calls",
    "render_tool_calls",
    "render_tool_response",
    "render_tools_block",
    "tool_call_grammar",
    "tool_description_spans",
    "tool_name",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>\n"
TOOL_RESPONSE_CLOSE = "\n</tool_response>"
_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)


def tool_description_spans(
    spec: Mapping[str, Any], emphasize: bool
) -> tuple[dict[str, Any], list[Span]]:
    """Removes inline emphasis markup from a tool's description.

    Args:
        spec: An OpenAI-format tool (``{"type": "function", "function": {...}}``).
        emphasize: Emphasize the whole description.

    Returns:
        The tool with a plain description, and the emphasized spans into that description.
    """
    function = dict(spec.get("function", {}))
    description = function.get("description") or ""
    plain, spans = parse_emphasis(description)
    if emphasize and plain:
        spans = [(0, len(plain))]
    function["description"] = plain
    return {**spec, "function": function}, spans


def tool_name(spec: Mapping[str, Any]) -> str:
    """The function name of an OpenAI-format tool."""
    return str(spec.get("function", {}).get("name", ""))


def render_tools_block(
    specs: Sequence[Mapping[str, Any]], emphasized: Callable[[str], bool]
) -> tuple[str, list[Span]]:
    """Renders tools for the system message, with the emphasized description spans.

    Args:
        specs: OpenAI-format tools; descriptions may hold ``<em>`` markup (the developer's
            own text, like a template's).
        emphasized: Whether a tool (by name) has its whole description emphasized.

    Returns:
        The tools block and the spans of emphasized description text within it.
    """
    markers = Markers()
    lines = []
    key = 0
    for spec in specs:
        plain, spans = tool_description_spans(spec, emphasized(tool_name(spec)))
        description = plain["function"]["description"]
        # Markers survive json.dumps (ensure_ascii=False), so escaping cannot shift spans.
        for start, end in reversed(spans):
            marked = markers.wrap(key, description[start:end])
            description = description[:start] + marked + description[end:]
            key += 1
        plain["function"]["description"] = description
        lines.append(json.dumps(plain, ensure_ascii=False))
    text, regions = markers.strip(_HEADER + "\n".join(lines) + _FOOTER)
    return text, normalize_spans([span for found in regions.values() for span in found])


def render_tool_calls(calls: Sequence[Mapping[str, Any]]) -> str:
    """Past tool calls of an assistant turn, in the format the model is asked to use."""
    return "\n".join(
        f"{TOOL_CALL_OPEN}\n"
        + json.dumps({"name": call["name"], "arguments": call.get("args", {})}, ensure_ascii=False)
        + f"\n{TOOL_CALL_CLOSE}"
        for call in calls
    )


def render_tool_response(content: str) -> tuple[str, int]:
    """A tool result as a user turn; returns the text and where ``content`` starts in it."""
    return f"{TOOL_RESPONSE_OPEN}{content}{TOOL_RESPONSE_CLOSE}", len(TOOL_RESPONSE_OPEN)


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """Splits model output into content and ``<tool_call>`` blocks.

    Args:
        text: The generated text.

    Returns:
        The text without tool-call blocks; the parsed calls (``name``, ``args``, ``id``); and
        the blocks that are not a JSON object with a string ``name`` (``name``, ``args``,
        ``id``, ``error``). ``arguments`` or ``parameters`` may hold the arguments.
    """
    calls: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    pieces: list[str] = []
    last = 0
    matches = list(_BLOCK.finditer(text))
    for match in matches:
        pieces.append(text[last : match.start()])
        last = match.end()
        body = match.group(1).strip()
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        try:
            data = json.loads(body)
        except json.JSONDecodeError as error:
            invalid.append({"name": None, "args": body, "id": call_id, "error": str(error)})
            continue
        arguments = (
            data.get("arguments", data.get("parameters", {})) if isinstance(data, dict) else None
        )
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("name"), str)
            or not isinstance(arguments, dict)
        ):
            invalid.append(
                {
                    "name": data.get("name") if isinstance(data, dict) else None,
                    "args": body,
                    "id": call_id,
                    "error": 'Expected {"name": <string>, "arguments": <object>}.',
                }
            )
            continue
        calls.append({"name": data["name"], "args": arguments, "id": call_id})
    pieces.append(text[last:])
    content = "".join(pieces)
    # An unterminated block (output cut by max_new_tokens) is reported, not shown as content.
    cut = content.find(TOOL_CALL_OPEN)
    if cut != -1:
        body = content[cut + len(TOOL_CALL_OPEN) :].strip()
        invalid.append(
            {
                "name": None,
                "args": body,
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "error": "Unterminated <tool_call> block (output cut off?).",
            }
        )
        content = content[:cut]
    if calls or invalid:
        content = content.strip()
    return content, calls, invalid


def tool_call_grammar(specs: Sequence[Mapping[str, Any]]) -> str:
    """An llguidance grammar for exactly one ``<tool_call>`` block calling one of ``specs``."""
    from pastalib._extras import require
    from pastalib.grammar import constrained_schema

    llguidance = require("llguidance")

    options = []
    for spec in specs:
        function = spec["function"]
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, "arguments": parameters},
                "required": ["name", "arguments"],
            }
        )
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    opening, closing = json.dumps(TOOL_CALL_OPEN + "\n"), json.dumps("\n" + TOOL_CALL_CLOSE)
    call = json.dumps(constrained_schema(schema))
    lark = f"start: {opening} call {closing}\ncall: %json {call}\n"
    return llguidance.LLMatcher.grammar_from_lark(lark)
