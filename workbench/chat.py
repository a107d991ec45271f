"""Chat templates from GGUF files, rendered in a sandbox.

A template comes from a stranger's file: it is rendered with Jinja's immutable sandbox,
which refuses attribute access to Python internals (the class of bug behind
CVE-2024-34359), and with no filesystem loader.
"""

from __future__ import annotations

from datetime import datetime

from jinja2 import TemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    pass


def _raise(msg):
    raise ChatTemplateError(f"the chat template raised: {msg}")


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "") -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        tpl = env.from_string(template)
        return tpl.render(messages=messages, add_generation_prompt=add_generation_prompt,
                          bos_token=bos_token, eos_token=eos_token)
    except SecurityError as e:
        raise ChatTemplateError(f"refused: the chat template tried an unsafe operation ({e})") from None
    except TemplateError as e:
        raise ChatTemplateError(f"the chat template failed: {e}") from None
